//! `e^x` in f32 without libm, branch-free so that loops over it vectorise: the softmax and GELU
//! kernels' exponential.

/// `e^x` in f32 without libm, branch-free so that loops over it vectorise (Cephes `expf`): `x = n ln2 + r`
/// with `|r| <= ln2/2`, a degree-7 polynomial for `e^r`, and `2^n` built from its exponent bits.
///
/// Relative error below 1e-7 on `[-87, 0]` (measured 8.0e-8, see the tests), likewise up to 88. Inputs below
/// `ln(f32::MIN_POSITIVE)` (about -87.34), `-inf` included, give exactly `0`: no subnormals. Inputs
/// above 88 saturate at `e^88`; NaN gives NaN.
#[inline(always)]
pub fn exp_approx(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split in two: C1 has few mantissa bits so `n * C1` is exact for |n| <= 128.
    const C1: f32 = 0.693_359_4;
    const C2: f32 = -2.121_944_4e-4;
    // Adding 1.5 * 2^23 rounds to the nearest integer and leaves it in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    const ROUND_BITS: i32 = 0x4B40_0000;
    const LOWEST: f32 = -87.336_55; // ln(f32::MIN_POSITIVE)

    // Comparisons rather than `min`/`max` so NaN passes through (and the selects vectorise).
    let xc = if x < -88.0 { -88.0 } else { x };
    let xc = if xc > 88.0 { 88.0 } else { xc };
    let t = xc * LOG2E + ROUND;
    let n = t - ROUND;
    let r = xc - n * C1;
    let r = r - n * C2;
    let mut p = 1.987_569_2e-4;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5; // Cephes: 5.0000001201e-1, which rounds to 0.5 in f32
    let er = p * (r * r) + r + 1.0;
    let k = (t.to_bits() as i32).wrapping_sub(ROUND_BITS); // n as an integer
    let two_n = f32::from_bits((k.wrapping_add(127) << 23) as u32);
    let y = er * two_n;
    if x < LOWEST {
        0.0
    } else {
        y
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_approx_accuracy() {
        let mut worst = 0f64;
        let steps = 2_000_000;
        for i in 0..=steps {
            let x = -87.0 * i as f32 / steps as f32;
            let exact = (x as f64).exp();
            let rel = ((exp_approx(x) as f64 - exact) / exact).abs();
            worst = worst.max(rel);
        }
        // Around every multiple of ln2 / 2: the points where the rounding of `n` switches.
        for k in -251..=0 {
            for d in [-1e-3f32, -1e-6, 0.0, 1e-6, 1e-3] {
                let x = k as f32 * std::f32::consts::LN_2 * 0.5 + d;
                if (-87.0..=0.0).contains(&x) {
                    let exact = (x as f64).exp();
                    worst = worst.max(((exp_approx(x) as f64 - exact) / exact).abs());
                }
            }
        }
        eprintln!("exp_approx: max relative error on [-87, 0] = {worst:e}");
        assert!(worst <= 2e-7, "max relative error {worst:e}");
        assert_eq!(exp_approx(0.0), 1.0);
        assert_eq!(exp_approx(-0.0), 1.0);
        assert_eq!(exp_approx(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_approx(-87.5), 0.0);
        assert_eq!(exp_approx(-100.0), 0.0);
        assert_eq!(exp_approx(-1e30), 0.0);
        assert_eq!(exp_approx(f32::MIN), 0.0);
        assert!(exp_approx(f32::NAN).is_nan());
        let lowest = exp_approx(-87.3);
        assert!(lowest.is_normal() && lowest > 0.0, "{lowest:e}");
        let one = exp_approx(1.0);
        assert!((one - std::f32::consts::E).abs() <= 2.0 * f32::EPSILON * one);
        assert!(exp_approx(88.0).is_finite());
    }
}
