//! The GStreamer sources' URLs and pipelines, in the URI syntax of jetson-inference:
//!
//! ```text
//! csi://0[?width=1280&height=720&fps=30]      a CSI camera module (nvarguscamerasrc, Jetson)
//! rtsp://user:pass@host:554/path[?latency=200] an RTSP camera (rtsps:// too)
//! file:///videos/clip.mp4[?loop=true]          a video file (mp4, mkv, avi, mov, webm)
//! ```
//!
//! This module is pure (parsing and pipeline text) and compiled in every build, so that a build
//! without the `gstreamer` feature can say what the URL needs. The pipelines carry no text from
//! the URL: the location is set as an element property when the pipeline is built
//! ([`super::gst`]), so no URL can inject pipeline syntax. Every pipeline ends in an
//! `appsink name=sink` delivering packed RGB; live sources keep only the newest frame.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Video containers played through GStreamer (by file extension, case-insensitive).
pub const VIDEO_EXTENSIONS: [&str; 5] = ["mp4", "mkv", "avi", "mov", "webm"];

/// A GStreamer source.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamRequest {
    /// `csi://N`: sensor N through `nvarguscamerasrc` and `nvvidconv` (NVIDIA's Jetson plugins).
    Csi {
        sensor: u32,
        width: u32,
        height: u32,
        fps: u32,
    },
    /// `rtsp://...`: an IP camera; `latency` ms of jitter buffer.
    Rtsp { url: String, latency_ms: u32 },
    /// `file://...mp4`: a video file, played at its own rate; `looping` starts it over at the end.
    Video { path: PathBuf, looping: bool },
}

/// Is `path` a video file the GStreamer source plays (by extension)?
pub fn is_video(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| VIDEO_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

impl StreamRequest {
    /// `csi://N` with its parameters.
    pub fn csi(sensor: &str, params: &BTreeMap<String, String>) -> Result<Self, String> {
        let sensor = sensor
            .trim_end_matches('/')
            .parse::<u32>()
            .ok()
            .filter(|n| *n < 16)
            .ok_or_else(|| {
                format!("csi://{sensor}: expected a sensor number 0-15, e.g. csi://0")
            })?;
        let (mut width, mut height, mut fps) = (1280, 720, 30);
        for (k, v) in params {
            match k.as_str() {
                "width" => width = super::spec::positive(k, v, 16_384)?,
                "height" => height = super::spec::positive(k, v, 16_384)?,
                "fps" => fps = super::spec::positive(k, v, 1000)?,
                _ => {
                    return Err(format!(
                        "unknown parameter {k:?} (known: width, height, fps)"
                    ))
                }
            }
        }
        Ok(StreamRequest::Csi {
            sensor,
            width,
            height,
            fps,
        })
    }

    /// `rtsp://` or `rtsps://` `rest`; `latency` is the only parameter of ours (others stay in the
    /// camera's URL).
    pub fn rtsp(scheme: &str, rest: &str) -> Result<Self, String> {
        let mut latency_ms = 200;
        let (location, query) = match rest.split_once('?') {
            Some((l, q)) => (l, q),
            None => (rest, ""),
        };
        let mut kept = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some(("latency", v)) => latency_ms = super::spec::positive("latency", v, 60_000)?,
                _ => kept.push(pair),
            }
        }
        if location.is_empty() || location.starts_with('/') {
            return Err(format!("expected {scheme}://host[:port]/path"));
        }
        let mut url = format!("{scheme}://{location}");
        if !kept.is_empty() {
            url = format!("{url}?{}", kept.join("&"));
        }
        Ok(StreamRequest::Rtsp { url, latency_ms })
    }

    /// Live sources (cameras) drop stale frames and reconnect; files end or loop.
    pub fn is_live(&self) -> bool {
        !matches!(self, StreamRequest::Video { .. })
    }

    /// For logs and `/healthz`; an RTSP password is not shown.
    pub fn describe(&self) -> String {
        match self {
            StreamRequest::Csi {
                sensor,
                width,
                height,
                fps,
            } => format!("CSI camera {sensor} ({width}x{height} @ {fps} fps, nvarguscamerasrc)"),
            StreamRequest::Rtsp { url, .. } => format!("RTSP camera {}", redact(url)),
            StreamRequest::Video { path, looping } => format!(
                "video {}{}",
                path.display(),
                if *looping { " (looping)" } else { "" }
            ),
        }
    }

    /// The `gst-launch` description of the pipeline; the element named `src` gets the location.
    pub fn pipeline(&self) -> String {
        const TO_RGB: &str = "videoconvert ! video/x-raw,format=RGB";
        const LIVE_SINK: &str = "appsink name=sink max-buffers=1 drop=true sync=false";
        match self {
            StreamRequest::Csi {
                sensor,
                width,
                height,
                fps,
            } => format!(
                "nvarguscamerasrc sensor-id={sensor} ! \
                 video/x-raw(memory:NVMM),width={width},height={height},framerate={fps}/1 ! \
                 nvvidconv ! video/x-raw,format=BGRx ! {TO_RGB} ! {LIVE_SINK}"
            ),
            StreamRequest::Rtsp { latency_ms, .. } => format!(
                "rtspsrc name=src latency={latency_ms} ! decodebin ! {TO_RGB} ! {LIVE_SINK}"
            ),
            // Played at the file's own rate (sync), as a camera would deliver it.
            StreamRequest::Video { .. } => format!(
                "filesrc name=src ! decodebin ! {TO_RGB} ! \
                 appsink name=sink max-buffers=1 drop=true sync=true"
            ),
        }
    }

    /// The value of the `src` element's `location` property (CSI has none).
    pub fn location(&self) -> Option<String> {
        match self {
            StreamRequest::Csi { .. } => None,
            StreamRequest::Rtsp { url, .. } => Some(url.clone()),
            StreamRequest::Video { path, .. } => Some(path.display().to_string()),
        }
    }
}

/// `rtsp://user:secret@host/...` with the password replaced by `***`.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            format!("{scheme}://{user}:***@{host}{}", &rest[authority_end..])
        }
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn csi_urls_take_a_sensor_and_size() {
        let c = StreamRequest::csi("1", &params(&[("width", "1920"), ("fps", "60")])).unwrap();
        assert_eq!(
            c,
            StreamRequest::Csi {
                sensor: 1,
                width: 1920,
                height: 720,
                fps: 60
            }
        );
        let p = c.pipeline();
        assert!(p.starts_with("nvarguscamerasrc sensor-id=1 !"), "{p}");
        assert!(p.contains("width=1920,height=720,framerate=60/1"), "{p}");
        assert!(p.ends_with("appsink name=sink max-buffers=1 drop=true sync=false"));
        assert_eq!(c.location(), None);
        assert!(StreamRequest::csi("x", &params(&[])).is_err());
        assert!(StreamRequest::csi("0", &params(&[("zoom", "2")]))
            .unwrap_err()
            .contains("zoom"));
    }

    #[test]
    fn rtsp_urls_keep_the_camera_query_and_hide_the_password() {
        let r = StreamRequest::rtsp(
            "rtsp",
            "admin:hunter2@10.0.0.5:554/live?channel=1&latency=50",
        )
        .unwrap();
        assert_eq!(
            r,
            StreamRequest::Rtsp {
                url: "rtsp://admin:hunter2@10.0.0.5:554/live?channel=1".into(),
                latency_ms: 50
            }
        );
        assert!(r.pipeline().contains("rtspsrc name=src latency=50"));
        assert!(
            !r.pipeline().contains("10.0.0.5"),
            "the URL is a property, not text"
        );
        assert_eq!(
            r.describe(),
            "RTSP camera rtsp://admin:***@10.0.0.5:554/live?channel=1"
        );
        assert!(r.is_live());
        assert!(StreamRequest::rtsp("rtsp", "/path").is_err());
        assert_eq!(redact("rtsp://cam/a@b"), "rtsp://cam/a@b");
    }

    #[test]
    fn video_files_are_told_by_extension_and_play_in_sync() {
        assert!(is_video(Path::new("/v/clip.MP4")));
        assert!(is_video(Path::new("a.mkv")));
        assert!(!is_video(Path::new("a.png")));
        assert!(!is_video(Path::new("frames/")));
        let v = StreamRequest::Video {
            path: "/v/a b.avi".into(),
            looping: true,
        };
        assert!(!v.is_live());
        assert!(v.pipeline().contains("sync=true"));
        assert_eq!(v.location().as_deref(), Some("/v/a b.avi"));
        assert_eq!(v.describe(), "video /v/a b.avi (looping)");
    }
}
