//! Where frames come from: one [`FrameSource`] trait over a V4L2 camera ([`v4l2`]), a directory
//! of images played as a sequence and a single image file ([`file`](mod@file)).
//!
//! A source is named by a URL ([`SourceSpec::parse`]):
//!
//! ```text
//! v4l2:///dev/video0[?width=640&height=480&fps=15&format=mjpg|yuyv]
//! file:///some/dir/[?loop=true&fps=10]     sorted image sequence (png, jpg, jpeg, bmp)
//! file:///some/image.jpg[?loop=true&fps=2] one image (once, or repeated with loop=true)
//! /some/dir  or  some/image.png            a plain path is a file source
//! ```
//!
//! Sources block: the pipeline calls [`FrameSource::next_frame`] on a capture thread of its own.
//! Errors say what to do next ([`ErrorKind`]): skip the frame, retry after a back-off (a camera
//! that vanished), or give up.

pub mod convert;
pub mod file;
pub mod v4l2;

use image::RgbImage;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// Frames above this many pixels (4096 x 2160, "4K") are refused from their header, before any
/// full-resolution work, and counted as corrupt: one huge frame must not cost gigabytes.
pub const MAX_FRAME_PIXELS: u64 = 4096 * 2160;

/// One captured and decoded frame.
#[derive(Debug, Clone)]
pub struct Captured {
    pub image: RgbImage,
    /// Where it came from (the file for file sources).
    pub label: Option<String>,
}

/// A producer of frames. `Ok(None)` means the source is finished (end of a non-looping sequence).
pub trait FrameSource: Send {
    /// A short description for logs and `/healthz`.
    fn describe(&self) -> String;
    /// Block until the next frame is available.
    fn next_frame(&mut self) -> Result<Option<Captured>, SourceError>;
    /// The pace the caller should keep between frames (file sources with `fps`); cameras pace
    /// themselves and return `None`.
    fn frame_interval(&self) -> Option<Duration> {
        None
    }
    /// Recorded sources (files) have no clock of their own: without a `frame_interval` they are
    /// played at the consumer's pace instead of being decoded as fast as the disk allows.
    fn is_recorded(&self) -> bool {
        false
    }
}

/// What the capture loop does with an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// One bad frame (corrupt file): warn, count, go on.
    Skip,
    /// The device is unavailable: log, back off, try again.
    Retry,
    /// Nothing will get better: stop the source.
    Fatal,
}

/// Errors of frame sources. Each names the URL, file or device concerned. What is transient
/// (a camera or a frame file that cannot be opened now) is retried, never counted as corrupt.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("bad source URL {url:?}: {reason}")]
    Url { url: String, reason: String },
    #[error("file source {}: no such file or directory", path.display())]
    NotFound { path: PathBuf },
    #[error("file source {}: no images (png, jpg, jpeg, bmp) in this directory", dir.display())]
    EmptyDir { dir: PathBuf },
    #[error("file source {}: {error}", path.display())]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("file source {}: no image in the sequence could be decoded", dir.display())]
    NothingDecodable { dir: PathBuf },
    #[error("file source {}: cannot read the frame: {error}", path.display())]
    Unavailable {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("corrupt frame {what}: {reason}")]
    Corrupt { what: String, reason: String },
    #[error("camera {}: {op}: {error}", path.display())]
    Device {
        path: PathBuf,
        op: &'static str,
        error: std::io::Error,
    },
    #[error("camera {}: {reason}", path.display())]
    Format { path: PathBuf, reason: String },
}

impl SourceError {
    /// How the capture loop should react.
    pub fn kind(&self) -> ErrorKind {
        match self {
            SourceError::Corrupt { .. } => ErrorKind::Skip,
            SourceError::Device { .. }
            | SourceError::Format { .. }
            | SourceError::Unavailable { .. } => ErrorKind::Retry,
            _ => ErrorKind::Fatal,
        }
    }
}

/// Pixel formats the V4L2 source can decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PixelFormat {
    Mjpg,
    Yuyv,
}

impl PixelFormat {
    pub fn fourcc(self) -> [u8; 4] {
        match self {
            PixelFormat::Mjpg => *b"MJPG",
            PixelFormat::Yuyv => *b"YUYV",
        }
    }
    pub fn from_fourcc(f: [u8; 4]) -> Option<Self> {
        match &f {
            b"MJPG" => Some(PixelFormat::Mjpg),
            b"YUYV" => Some(PixelFormat::Yuyv),
            _ => None,
        }
    }
}

/// What a camera URL asks for.
#[derive(Debug, Clone, PartialEq)]
pub struct V4l2Request {
    pub device: PathBuf,
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    /// `None`: let format negotiation pick.
    pub format: Option<PixelFormat>,
}

/// A parsed source URL.
#[derive(Debug, Clone, PartialEq)]
pub enum SourceSpec {
    V4l2(V4l2Request),
    /// A directory (sequence) or a single image; decided when opened.
    File {
        path: PathBuf,
        looping: bool,
        fps: Option<f64>,
    },
}

impl SourceSpec {
    /// Parse a source URL (see the module documentation).
    pub fn parse(url: &str) -> Result<Self, SourceError> {
        let bad = |reason: String| SourceError::Url {
            url: url.to_string(),
            reason,
        };
        if url.trim().is_empty() {
            return Err(bad("empty source".into()));
        }
        let (scheme, rest) = match url.split_once("://") {
            Some((s, r)) => (s.to_ascii_lowercase(), r),
            None => ("file".to_string(), url),
        };
        let (path, query) = match rest.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (rest, None),
        };
        let params = parse_query(query.unwrap_or("")).map_err(&bad)?;
        if path.is_empty() {
            return Err(bad("no path after the scheme".into()));
        }
        match scheme.as_str() {
            "v4l2" => {
                if !path.starts_with('/') {
                    return Err(bad(
                        "expected an absolute device path, e.g. v4l2:///dev/video0".into(),
                    ));
                }
                let mut req = V4l2Request {
                    device: PathBuf::from(path),
                    width: 640,
                    height: 480,
                    fps: 15,
                    format: None,
                };
                for (k, v) in &params {
                    match k.as_str() {
                        "width" => req.width = positive(k, v, 16_384).map_err(&bad)?,
                        "height" => req.height = positive(k, v, 16_384).map_err(&bad)?,
                        "fps" => req.fps = positive(k, v, 1000).map_err(&bad)?,
                        "format" => {
                            req.format = Some(match v.to_ascii_lowercase().as_str() {
                                "mjpg" | "mjpeg" => PixelFormat::Mjpg,
                                "yuyv" | "yuy2" => PixelFormat::Yuyv,
                                _ => {
                                    return Err(bad(format!("format={v:?}: expected mjpg or yuyv")))
                                }
                            })
                        }
                        _ => {
                            return Err(bad(format!(
                                "unknown parameter {k:?} (known: width, height, fps, format)"
                            )))
                        }
                    }
                }
                Ok(SourceSpec::V4l2(req))
            }
            "file" => {
                let (mut looping, mut fps) = (false, None);
                for (k, v) in &params {
                    match k.as_str() {
                        "loop" => {
                            looping = match v.as_str() {
                                "true" | "1" | "yes" => true,
                                "false" | "0" | "no" => false,
                                _ => {
                                    return Err(bad(format!("loop={v:?}: expected true or false")))
                                }
                            }
                        }
                        "fps" => match v.parse::<f64>() {
                            Ok(f) if f.is_finite() && f > 0.0 && f <= 1000.0 => fps = Some(f),
                            _ => {
                                return Err(bad(format!(
                                    "fps={v:?}: expected a number in (0, 1000]"
                                )))
                            }
                        },
                        _ => {
                            return Err(bad(format!("unknown parameter {k:?} (known: loop, fps)")))
                        }
                    }
                }
                Ok(SourceSpec::File {
                    path: PathBuf::from(path),
                    looping,
                    fps,
                })
            }
            other => Err(bad(format!(
                "unsupported scheme {other:?} (expected v4l2://, file:// or a plain path)"
            ))),
        }
    }

    /// Open the source. Files are checked now (missing or empty directories fail here); cameras
    /// connect lazily and retry, so a missing camera is not an error yet.
    pub fn open(&self) -> Result<Box<dyn FrameSource>, SourceError> {
        match self {
            SourceSpec::V4l2(req) => Ok(Box::new(v4l2::V4l2Source::new(req.clone()))),
            SourceSpec::File { path, looping, fps } => file::open(
                path,
                *looping,
                fps.map(|f| Duration::from_secs_f64(1.0 / f)),
            ),
        }
    }
}

fn parse_query(q: &str) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for pair in q.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| format!("parameter {pair:?} has no value (expected key=value)"))?;
        if k.is_empty() || v.is_empty() {
            return Err(format!("parameter {pair:?}: empty key or value"));
        }
        if out.insert(k.to_ascii_lowercase(), v.to_string()).is_some() {
            return Err(format!("parameter {k:?} given twice"));
        }
    }
    Ok(out)
}

fn positive(key: &str, value: &str, max: u32) -> Result<u32, String> {
    match value.parse::<u32>() {
        Ok(n) if n > 0 && n <= max => Ok(n),
        _ => Err(format!("{key}={value:?}: expected an integer in 1..={max}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn camera_urls_parse_with_defaults_and_parameters() {
        let s = SourceSpec::parse("v4l2:///dev/video0").unwrap();
        assert_eq!(
            s,
            SourceSpec::V4l2(V4l2Request {
                device: "/dev/video0".into(),
                width: 640,
                height: 480,
                fps: 15,
                format: None
            })
        );
        let s = SourceSpec::parse("v4l2:///dev/video2?width=1280&height=720&fps=30&format=YUYV")
            .unwrap();
        let SourceSpec::V4l2(r) = s else { panic!() };
        assert_eq!((r.width, r.height, r.fps), (1280, 720, 30));
        assert_eq!(r.format, Some(PixelFormat::Yuyv));
    }

    #[test]
    fn file_urls_and_plain_paths_parse() {
        assert_eq!(
            SourceSpec::parse("file:///data/frames/?loop=true&fps=2.5").unwrap(),
            SourceSpec::File {
                path: "/data/frames/".into(),
                looping: true,
                fps: Some(2.5)
            }
        );
        assert_eq!(
            SourceSpec::parse("frames/x.jpg").unwrap(),
            SourceSpec::File {
                path: "frames/x.jpg".into(),
                looping: false,
                fps: None
            }
        );
    }

    #[test]
    fn bad_urls_say_what_is_wrong() {
        let cases = [
            ("rtsp://cam/1", "unsupported scheme"),
            ("v4l2://dev/video0", "absolute device path"),
            ("v4l2:///dev/video0?width=0", "width"),
            ("v4l2:///dev/video0?fps=abc", "fps"),
            ("v4l2:///dev/video0?format=h264", "mjpg or yuyv"),
            ("v4l2:///dev/video0?zoom=2", "unknown parameter \"zoom\""),
            ("v4l2:///dev/video0?width", "no value"),
            ("file:///x?loop=maybe", "loop"),
            ("file:///x?fps=-1", "fps"),
            ("file:///x?fps=1&fps=2", "twice"),
            ("file://", "no path"),
            ("", "empty"),
        ];
        for (url, want) in cases {
            let e = SourceSpec::parse(url).unwrap_err().to_string();
            assert!(e.contains(want), "{url}: {e}");
            assert_eq!(SourceSpec::parse(url).unwrap_err().kind(), ErrorKind::Fatal);
        }
    }
}
