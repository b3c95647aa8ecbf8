//! Few-shot segmentation scores, accumulated exactly as the field (PFENet / BAM `test.py`) does:
//!
//! * **mIoU**: for every test class c, `IoU_c = Σ_e I_e / Σ_e U_e` over all episodes e of class c
//!   (foreground intersection and union summed first, divided once), then the mean over classes.
//!   This is not the mean of per-episode IoUs: large objects weigh more.
//! * **FB-IoU**: foreground and background IoU, each summed over all episodes of all classes, then
//!   their mean.
//! * Pixels labelled [`IGNORE`] (255) count in neither intersection nor union.
//!
//! Predictions and labels are row-major `&[u8]` at the original label resolution: prediction 0/1,
//! label 0/1/255.
//!
//! Zero union: a class whose summed foreground union is 0 (every episode all-ignore, or empty label
//! and empty prediction) is **skipped** in the mIoU mean rather than counted as 0 (PFENet would count
//! it as 0 through its `+1e-10`; with real benchmark labels the case never arises). Likewise a
//! background/foreground term with zero union is left out of FB-IoU.

use std::collections::BTreeMap;

use serde::Serialize;

/// The ignore label.
pub const IGNORE: u8 = 255;

/// `[(intersection, union); 2]` for background (index 0) and foreground (index 1) of one prediction,
/// over the pixels whose label is not [`IGNORE`]. Values other than 0/1 belong to neither class.
pub fn intersection_union(pred: &[u8], label: &[u8]) -> [(u64, u64); 2] {
    let mut out = [(0u64, 0u64); 2];
    for (&p, &l) in pred.iter().zip(label) {
        if l == IGNORE {
            continue;
        }
        for (k, (i, u)) in out.iter_mut().enumerate() {
            let (pk, lk) = (p as usize == k, l as usize == k);
            *i += (pk && lk) as u64;
            *u += (pk || lk) as u64;
        }
    }
    out
}

/// Summed intersection / union of one class (or of bg / fg for FB-IoU).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct IouSums {
    pub intersection: u64,
    pub union: u64,
    pub episodes: u64,
}

impl IouSums {
    fn add(&mut self, (i, u): (u64, u64)) {
        self.intersection += i;
        self.union += u;
        self.episodes += 1;
    }

    fn merge(&mut self, o: &IouSums) {
        self.intersection += o.intersection;
        self.union += o.union;
        self.episodes += o.episodes;
    }

    /// `Σ I / Σ U`, `None` when the union is 0.
    pub fn iou(&self) -> Option<f64> {
        (self.union > 0).then(|| self.intersection as f64 / self.union as f64)
    }
}

/// Accumulates episodes of a fold (any classes) and reports mIoU and FB-IoU.
#[derive(Debug, Clone, Default)]
pub struct IouAccumulator {
    /// Foreground sums per class id.
    classes: BTreeMap<usize, IouSums>,
    /// Background (0) and foreground (1) sums over all episodes.
    fb: [IouSums; 2],
}

impl IouAccumulator {
    pub fn new() -> Self {
        Self::default()
    }

    /// Add one episode of `class`: `pred` (0/1) and `label` (0/1/255) of equal length.
    pub fn add(&mut self, class: usize, pred: &[u8], label: &[u8]) -> crate::Result<()> {
        check_episode(pred, label)?;
        let iu = intersection_union(pred, label);
        self.classes.entry(class).or_default().add(iu[1]);
        self.fb[0].add(iu[0]);
        self.fb[1].add(iu[1]);
        Ok(())
    }

    /// Add everything another accumulator holds (e.g. from parallel workers).
    pub fn merge(&mut self, other: &IouAccumulator) {
        for (c, s) in &other.classes {
            self.classes.entry(*c).or_default().merge(s);
        }
        self.fb[0].merge(&other.fb[0]);
        self.fb[1].merge(&other.fb[1]);
    }

    /// Number of episodes added.
    pub fn episodes(&self) -> u64 {
        self.fb[1].episodes
    }

    /// Raw sums per class.
    pub fn class_sums(&self) -> &BTreeMap<usize, IouSums> {
        &self.classes
    }

    /// Foreground IoU per class (`Σ I / Σ U` over its episodes); classes with zero union are absent.
    pub fn class_iou(&self) -> BTreeMap<usize, f64> {
        self.classes
            .iter()
            .filter_map(|(c, s)| s.iou().map(|v| (*c, v)))
            .collect()
    }

    /// Mean of [`Self::class_iou`]; `None` when no class has a positive union.
    pub fn miou(&self) -> Option<f64> {
        mean(self.class_iou().values().copied())
    }

    /// Background IoU and foreground IoU, each accumulated over all episodes.
    pub fn fb_ious(&self) -> [Option<f64>; 2] {
        [self.fb[0].iou(), self.fb[1].iou()]
    }

    /// Mean of background and foreground IoU (terms with zero union left out).
    pub fn fb_iou(&self) -> Option<f64> {
        mean(self.fb_ious().into_iter().flatten())
    }

    /// Everything above, serialisable.
    pub fn summary(&self) -> Summary {
        let [bg, fg] = self.fb_ious();
        Summary {
            episodes: self.episodes(),
            miou: self.miou(),
            fb_iou: self.fb_iou(),
            background_iou: bg,
            foreground_iou: fg,
            classes: self
                .classes
                .iter()
                .map(|(c, s)| ClassSummary {
                    class: *c,
                    iou: s.iou(),
                    sums: *s,
                })
                .collect(),
        }
    }
}

/// Per-class line of a [`Summary`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClassSummary {
    pub class: usize,
    /// `None` when the class's union is 0 (skipped in mIoU).
    pub iou: Option<f64>,
    #[serde(flatten)]
    pub sums: IouSums,
}

/// Scores of a run, ready for JSON.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    pub episodes: u64,
    pub miou: Option<f64>,
    pub fb_iou: Option<f64>,
    pub background_iou: Option<f64>,
    pub foreground_iou: Option<f64>,
    pub classes: Vec<ClassSummary>,
}

fn mean(values: impl Iterator<Item = f64>) -> Option<f64> {
    let (sum, n) = values.fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
    (n > 0).then(|| sum / n as f64)
}

fn check_episode(pred: &[u8], label: &[u8]) -> crate::Result<()> {
    if pred.len() != label.len() {
        return Err(crate::Error::Input(format!(
            "prediction has {} pixels but the label has {}",
            pred.len(),
            label.len()
        )));
    }
    if let Some(v) = pred.iter().find(|&&v| v > 1) {
        return Err(crate::Error::Input(format!(
            "prediction value {v} is not 0/1"
        )));
    }
    if let Some(v) = label.iter().find(|&&v| v > 1 && v != IGNORE) {
        return Err(crate::Error::Input(format!(
            "label value {v} is not 0/1/255"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: Option<f64>, b: f64) -> bool {
        a.is_some_and(|a| (a - b).abs() < 1e-12)
    }

    #[test]
    fn intersection_union_hand_case_with_ignore() {
        //            p: 1 1 0 0 1 0
        //            l: 1 0 1 0 255 255
        let iu = intersection_union(&[1, 1, 0, 0, 1, 0], &[1, 0, 1, 0, 255, 255]);
        // fg: I = {0}, U = {0,1,2}; bg: I = {3}, U = {1,2,3}
        assert_eq!(iu, [(1, 3), (1, 3)]);
    }

    #[test]
    fn two_classes_several_episodes() -> crate::Result<()> {
        let mut acc = IouAccumulator::new();
        // class 3, episode 1: fg I=2 U=4, bg I=1 U=3 (pixel 5 ignored)
        acc.add(3, &[1, 1, 1, 0, 0, 1], &[1, 1, 0, 1, 0, 255])?;
        // class 3, episode 2: fg I=1 U=1, bg I=3 U=3
        acc.add(3, &[1, 0, 0, 0], &[1, 0, 0, 0])?;
        // class 7: fg I=0 U=2, bg I=2 U=4
        acc.add(7, &[0, 1, 0, 0], &[1, 0, 0, 0])?;
        assert_eq!(acc.episodes(), 3);
        let per_class = acc.class_iou();
        assert!(close(per_class.get(&3).copied(), 3.0 / 5.0));
        assert!(close(per_class.get(&7).copied(), 0.0));
        assert!(close(acc.miou(), (0.6 + 0.0) / 2.0));
        // fg over all: I = 3, U = 7; bg over all: I = 6, U = 10.
        let [bg, fg] = acc.fb_ious();
        assert!(close(fg, 3.0 / 7.0) && close(bg, 0.6));
        assert!(close(acc.fb_iou(), (3.0 / 7.0 + 0.6) / 2.0));
        Ok(())
    }

    #[test]
    fn accumulation_differs_from_mean_of_episode_ious() -> crate::Result<()> {
        let mut acc = IouAccumulator::new();
        // Big object, perfect: I = U = 8.  Small object, missed: I = 0, U = 1.
        acc.add(0, &[1; 8], &[1; 8])?;
        acc.add(0, &[0, 0], &[1, 0])?;
        // Accumulated: 8 / 9. Mean of episode IoUs would be (1 + 0) / 2 = 0.5.
        assert!(close(acc.miou(), 8.0 / 9.0));
        Ok(())
    }

    #[test]
    fn zero_union_class_is_skipped() -> crate::Result<()> {
        let mut acc = IouAccumulator::new();
        acc.add(1, &[1, 0], &[1, 0])?; // IoU 1
        acc.add(2, &[0, 0], &[0, 255])?; // empty label and prediction: union 0
        acc.add(4, &[1, 1], &[255, 255])?; // all ignored: union 0
        assert_eq!(acc.class_iou().len(), 1);
        assert!(close(acc.miou(), 1.0));
        let s = acc.summary();
        assert_eq!(s.classes.len(), 3);
        assert_eq!(s.classes[1].iou, None);
        assert_eq!(IouAccumulator::new().miou(), None);
        Ok(())
    }

    #[test]
    fn bad_inputs_are_rejected_and_merge_adds() -> crate::Result<()> {
        let mut acc = IouAccumulator::new();
        assert!(matches!(
            acc.add(0, &[1, 0], &[1]),
            Err(crate::Error::Input(_))
        ));
        assert!(acc.add(0, &[2], &[1]).is_err());
        assert!(acc.add(0, &[1], &[7]).is_err());
        assert_eq!(acc.episodes(), 0);
        acc.add(0, &[1, 1], &[1, 0])?;
        let mut other = IouAccumulator::new();
        other.add(0, &[1, 0], &[1, 0])?;
        other.merge(&acc);
        assert!(close(other.miou(), 2.0 / 3.0));
        assert_eq!(other.episodes(), 2);
        let json = serde_json::to_string(&other.summary()).expect("serialise");
        assert!(
            json.contains("\"miou\"") && json.contains("\"intersection\":2"),
            "{json}"
        );
        Ok(())
    }
}
