//! V4L2 camera capture (MJPEG or YUYV, memory-mapped buffers) through the `v4l` crate.
//!
//! The camera is opened lazily: every error (no device, busy, unplugged mid-stream) drops the
//! connection and is returned as a retryable [`SourceError`]; the capture loop backs off and the
//! next [`FrameSource::next_frame`] reconnects. Format negotiation ([`choose_format`]) is a pure
//! function of what the camera offers, so it is tested without a camera.

use super::convert::{decode_mjpeg, yuyv_to_rgb};
use super::{Captured, FrameSource, PixelFormat, SourceError, V4l2Request, MAX_FRAME_PIXELS};
use std::path::PathBuf;
use std::time::Duration;
use v4l::buffer::Type;
use v4l::format::FourCC;
use v4l::frameinterval::FrameIntervalEnum;
use v4l::framesize::FrameSizeEnum;
use v4l::io::mmap::Stream as MmapStream;
use v4l::io::traits::CaptureStream;
use v4l::video::capture::Parameters;
use v4l::video::Capture;
use v4l::{Device, Format};

/// How long one dequeue may block before the capture loop gets control back.
const DEQUEUE_TIMEOUT: Duration = Duration::from_secs(2);
/// Memory-mapped buffers requested from the driver.
const BUFFERS: u32 = 4;

/// One frame size a camera offers for a pixel format.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OfferedSize {
    pub width: u32,
    pub height: u32,
    /// The highest frame rate at this size, when the driver says.
    pub max_fps: Option<f64>,
}

/// What the negotiation settled on.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Choice {
    pub format: PixelFormat,
    pub width: u32,
    pub height: u32,
    pub fps: u32,
}

/// Pick the best offered (format, size, rate) for a request.
///
/// Order of preference: the size closest to the requested one (log-area distance plus log-aspect
/// distance), then a rate that reaches the requested fps, then YUYV over MJPEG (no JPEG decode and
/// no compression artefacts). A `format=` in the request restricts the choice to that format.
pub fn choose_format(
    offered: &[([u8; 4], Vec<OfferedSize>)],
    req: &V4l2Request,
) -> Result<Choice, String> {
    let names = || {
        offered
            .iter()
            .map(|(f, _)| String::from_utf8_lossy(f).trim().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let usable: Vec<(PixelFormat, &Vec<OfferedSize>)> = offered
        .iter()
        .filter_map(|(f, s)| PixelFormat::from_fourcc(*f).map(|p| (p, s)))
        .filter(|(p, _)| req.format.is_none_or(|want| want == *p))
        .collect();
    if usable.is_empty() {
        return Err(match req.format {
            Some(f) => format!(
                "the camera does not offer {} (it offers: {})",
                String::from_utf8_lossy(&f.fourcc()),
                names()
            ),
            None => format!(
                "the camera offers none of MJPG, YUYV (it offers: {})",
                names()
            ),
        });
    }
    let (rw, rh) = (f64::from(req.width), f64::from(req.height));
    let mut best: Option<((u64, u64, u8), Choice)> = None;
    for (format, sizes) in usable {
        // A format without a size list: ask for the requested size, the driver adjusts it.
        let fallback = [OfferedSize {
            width: req.width,
            height: req.height,
            max_fps: None,
        }];
        let sizes = if sizes.is_empty() {
            &fallback[..]
        } else {
            sizes
        };
        for s in sizes.iter().filter(|s| s.width > 0 && s.height > 0) {
            let (w, h) = (f64::from(s.width), f64::from(s.height));
            let size_penalty = ((w * h) / (rw * rh)).ln().abs() + ((w / h) / (rw / rh)).ln().abs();
            let fps_short = s.max_fps.map_or(0.0, |m| (f64::from(req.fps) - m).max(0.0));
            let rank = u8::from(format == PixelFormat::Mjpg);
            let key = (
                (size_penalty * 1000.0).round() as u64,
                (fps_short * 10.0).round() as u64,
                rank,
            );
            let fps = s
                .max_fps
                .map_or(req.fps, |m| req.fps.min(m.floor().max(1.0) as u32));
            let choice = Choice {
                format,
                width: s.width,
                height: s.height,
                fps,
            };
            if best.as_ref().is_none_or(|(k, _)| key < *k) {
                best = Some((key, choice));
            }
        }
    }
    best.map(|(_, c)| c)
        .ok_or_else(|| format!("the camera lists no usable frame size ({})", names()))
}

/// A V4L2 camera.
pub struct V4l2Source {
    req: V4l2Request,
    conn: Option<Connection>,
}

struct Connection {
    stream: MmapStream<'static>,
    _device: Device,
    choice: Choice,
    stride: u32,
}

impl V4l2Source {
    /// A camera source; nothing is opened until the first frame is asked for.
    pub fn new(req: V4l2Request) -> Self {
        Self { req, conn: None }
    }

    fn err(&self, op: &'static str, error: std::io::Error) -> SourceError {
        SourceError::Device {
            path: self.req.device.clone(),
            op,
            error,
        }
    }

    fn connect(&self) -> Result<Connection, SourceError> {
        let path: &PathBuf = &self.req.device;
        let device = Device::with_path(path).map_err(|e| self.err("cannot open", e))?;
        let caps = device
            .query_caps()
            .map_err(|e| self.err("query capabilities", e))?;
        let formats = device
            .enum_formats()
            .map_err(|e| self.err("list formats", e))?;
        let offered: Vec<([u8; 4], Vec<OfferedSize>)> = formats
            .iter()
            .map(|d| {
                let sizes = if PixelFormat::from_fourcc(d.fourcc.repr).is_some() {
                    offered_sizes(&device, d.fourcc, &self.req)
                } else {
                    Vec::new()
                };
                (d.fourcc.repr, sizes)
            })
            .collect();
        let choice = choose_format(&offered, &self.req).map_err(|reason| SourceError::Format {
            path: path.clone(),
            reason,
        })?;
        let fourcc = FourCC::new(&choice.format.fourcc());
        let actual = device
            .set_format(&Format::new(choice.width, choice.height, fourcc))
            .map_err(|e| self.err("set format", e))?;
        let Some(format) = PixelFormat::from_fourcc(actual.fourcc.repr) else {
            return Err(SourceError::Format {
                path: path.clone(),
                reason: format!(
                    "the driver switched to unsupported format {}",
                    actual.fourcc
                ),
            });
        };
        if let Err(e) = device.set_params(&Parameters::with_fps(choice.fps)) {
            tracing::warn!(camera = %path.display(), "cannot set {} fps: {e}", choice.fps);
        }
        let mut stream = MmapStream::with_buffers(&device, Type::VideoCapture, BUFFERS)
            .map_err(|e| self.err("map buffers", e))?;
        stream.set_timeout(DEQUEUE_TIMEOUT);
        let choice = Choice {
            format,
            width: actual.width,
            height: actual.height,
            ..choice
        };
        tracing::info!(
            camera = %path.display(),
            card = %caps.card,
            "streaming {}x{} {:?} at up to {} fps",
            choice.width,
            choice.height,
            choice.format,
            choice.fps
        );
        Ok(Connection {
            stream,
            _device: device,
            choice,
            stride: actual.stride,
        })
    }

    fn disconnect(&mut self) {
        if let Some(conn) = self.conn.take() {
            // v4l panics in Drop when STREAMOFF fails with anything but ENODEV; a camera going
            // away must not take the service down with it.
            let dropped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(conn)));
            if dropped.is_err() {
                tracing::warn!(camera = %self.req.device.display(), "camera did not stop cleanly");
            }
        }
    }
}

/// The sizes (and their top frame rates) a camera offers for one format. Stepwise ranges are
/// represented by the allowed size nearest the request.
fn offered_sizes(device: &Device, fourcc: FourCC, req: &V4l2Request) -> Vec<OfferedSize> {
    let Ok(sizes) = device.enum_framesizes(fourcc) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for s in sizes {
        let dims: Vec<(u32, u32)> = match s.size {
            FrameSizeEnum::Discrete(d) => vec![(d.width, d.height)],
            FrameSizeEnum::Stepwise(st) => {
                let snap = |want: u32, min: u32, max: u32, step: u32| {
                    let v = want.clamp(min, max.max(min));
                    min + (v - min) / step.max(1) * step.max(1)
                };
                vec![(
                    snap(req.width, st.min_width, st.max_width, st.step_width),
                    snap(req.height, st.min_height, st.max_height, st.step_height),
                )]
            }
        };
        for (width, height) in dims {
            let max_fps = device
                .enum_frameintervals(fourcc, width, height)
                .ok()
                .and_then(|ivs| {
                    ivs.iter()
                        .map(|iv| match &iv.interval {
                            FrameIntervalEnum::Discrete(f) => fps_of(f.numerator, f.denominator),
                            FrameIntervalEnum::Stepwise(st) => {
                                fps_of(st.min.numerator, st.min.denominator)
                            }
                        })
                        .reduce(f64::max)
                });
            out.push(OfferedSize {
                width,
                height,
                max_fps,
            });
        }
    }
    out
}

fn fps_of(num: u32, den: u32) -> f64 {
    if num == 0 {
        0.0
    } else {
        f64::from(den) / f64::from(num)
    }
}

impl FrameSource for V4l2Source {
    fn describe(&self) -> String {
        format!(
            "camera {} ({}x{} at {} fps{})",
            self.req.device.display(),
            self.req.width,
            self.req.height,
            self.req.fps,
            self.req
                .format
                .map(|f| format!(", {}", String::from_utf8_lossy(&f.fourcc())))
                .unwrap_or_default()
        )
    }

    fn next_frame(&mut self) -> Result<Option<Captured>, SourceError> {
        if self.conn.is_none() {
            self.conn = Some(self.connect()?);
        }
        let conn = self.conn.as_mut().expect("connected above");
        let (choice, stride) = (conn.choice, conn.stride);
        let data = match conn.stream.next() {
            Ok((buf, meta)) => {
                let used = (meta.bytesused as usize).min(buf.len());
                let used = if used == 0 { buf.len() } else { used };
                buf[..used].to_vec()
            }
            Err(e) => {
                self.disconnect();
                return Err(self.err("capture", e));
            }
        };
        let image = match choice.format {
            PixelFormat::Yuyv => yuyv_to_rgb(&data, choice.width, choice.height, stride),
            PixelFormat::Mjpg => decode_mjpeg(&data, MAX_FRAME_PIXELS),
        }
        .map_err(|reason| SourceError::Corrupt {
            what: format!("from {}", self.req.device.display()),
            reason,
        })?;
        Ok(Some(Captured { image, label: None }))
    }
}

impl Drop for V4l2Source {
    fn drop(&mut self) {
        self.disconnect();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::source::ErrorKind;

    fn req(w: u32, h: u32, fps: u32, format: Option<PixelFormat>) -> V4l2Request {
        V4l2Request {
            device: "/dev/video0".into(),
            width: w,
            height: h,
            fps,
            format,
        }
    }

    fn size(width: u32, height: u32, fps: f64) -> OfferedSize {
        OfferedSize {
            width,
            height,
            max_fps: Some(fps),
        }
    }

    fn webcam() -> Vec<([u8; 4], Vec<OfferedSize>)> {
        vec![
            (*b"YUYV", vec![size(640, 480, 30.0), size(1280, 720, 10.0)]),
            (*b"MJPG", vec![size(640, 480, 30.0), size(1280, 720, 30.0)]),
            (*b"H264", vec![size(1920, 1080, 30.0)]),
        ]
    }

    #[test]
    fn negotiation_prefers_exact_size_then_rate_then_yuyv() {
        let c = choose_format(&webcam(), &req(640, 480, 15, None)).unwrap();
        assert_eq!(
            (c.format, c.width, c.height, c.fps),
            (PixelFormat::Yuyv, 640, 480, 15)
        );
        // YUYV 720p only reaches 10 fps: MJPEG wins at 30.
        let c = choose_format(&webcam(), &req(1280, 720, 30, None)).unwrap();
        assert_eq!((c.format, c.width, c.fps), (PixelFormat::Mjpg, 1280, 30));
        // Forced YUYV: the rate is capped at what the camera can do.
        let c = choose_format(&webcam(), &req(1280, 720, 30, Some(PixelFormat::Yuyv))).unwrap();
        assert_eq!((c.format, c.width, c.fps), (PixelFormat::Yuyv, 1280, 10));
        // 800x600 is nearer 640x480 (same aspect) than 1280x720.
        let c = choose_format(&webcam(), &req(800, 600, 15, None)).unwrap();
        assert_eq!((c.width, c.height), (640, 480));
        // No size list: the request goes to the driver as is.
        let c = choose_format(&[(*b"MJPG", vec![])], &req(320, 240, 5, None)).unwrap();
        assert_eq!(
            (c.format, c.width, c.height, c.fps),
            (PixelFormat::Mjpg, 320, 240, 5)
        );
    }

    #[test]
    fn negotiation_errors_list_what_the_camera_offers() {
        let e = choose_format(&[(*b"H264", vec![])], &req(640, 480, 15, None)).unwrap_err();
        assert!(
            e.contains("none of MJPG, YUYV") && e.contains("H264"),
            "{e}"
        );
        let only_yuyv = vec![(*b"YUYV", vec![size(640, 480, 30.0)])];
        let e = choose_format(&only_yuyv, &req(640, 480, 15, Some(PixelFormat::Mjpg))).unwrap_err();
        assert!(
            e.contains("does not offer MJPG") && e.contains("YUYV"),
            "{e}"
        );
    }

    #[test]
    fn a_missing_camera_is_a_retryable_error_naming_the_device() {
        let mut s = V4l2Source::new(V4l2Request {
            device: "/dev/video9-mce-test".into(),
            ..req(640, 480, 15, None)
        });
        for _ in 0..2 {
            let e = s.next_frame().unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Retry);
            let msg = e.to_string();
            assert!(
                msg.contains("/dev/video9-mce-test") && msg.contains("cannot open"),
                "{msg}"
            );
        }
        assert!(s.describe().contains("/dev/video9-mce-test"));
    }
}
