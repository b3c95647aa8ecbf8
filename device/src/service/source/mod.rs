//! Where frames come from: one [`FrameSource`] trait over a V4L2 camera ([`v4l2`]), a directory
//! of images played as a sequence and a single image file ([`file`](mod@file)), and, with the
//! `gstreamer` feature, CSI cameras, RTSP cameras and video files (`gst`, URLs in
//! [`stream_spec`]).
//!
//! A source is named by a URL ([`SourceSpec::parse`]):
//!
//! ```text
//! v4l2:///dev/video0[?width=640&height=480&fps=15&format=mjpg|yuyv]
//! file:///some/dir/[?loop=true&fps=10]     sorted image sequence (png, jpg, jpeg, bmp)
//! file:///some/image.jpg[?loop=true&fps=2] one image (once, or repeated with loop=true)
//! /some/dir  or  some/image.png            a plain path is a file source
//! csi://0[?width=1280&height=720&fps=30]   CSI camera (gstreamer feature; nvarguscamerasrc)
//! rtsp://host:554/path[?latency=200]       RTSP camera (gstreamer feature)
//! file:///videos/clip.mp4[?loop=true]      video file: mp4 mkv avi mov webm (gstreamer feature)
//! ```
//!
//! Sources block: the pipeline calls [`FrameSource::next_frame`] on a capture thread of its own.
//! Errors say what to do next ([`ErrorKind`]): skip the frame, retry after a back-off (a camera
//! that vanished), or give up.

pub mod convert;
pub mod file;
#[cfg(feature = "gstreamer")]
pub mod gst;
mod spec;
pub mod stream_spec;
pub mod v4l2;

pub use spec::{SourceSpec, V4l2Request};

use image::RgbImage;
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
    /// A GStreamer source (CSI, RTSP, video file); `retry`: the camera may come back.
    #[error("{what}: {reason}")]
    Stream {
        what: String,
        reason: String,
        retry: bool,
    },
}

impl SourceError {
    /// How the capture loop should react.
    pub fn kind(&self) -> ErrorKind {
        match self {
            SourceError::Corrupt { .. } => ErrorKind::Skip,
            SourceError::Device { .. }
            | SourceError::Format { .. }
            | SourceError::Unavailable { .. } => ErrorKind::Retry,
            SourceError::Stream { retry: true, .. } => ErrorKind::Retry,
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
