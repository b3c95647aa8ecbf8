//! Source URLs: [`SourceSpec::parse`] turns the URL a user gives into what to open, and
//! [`SourceSpec::open`] opens it (see the [module documentation](super) for the syntax).

use super::stream_spec::{is_video, StreamRequest};
use super::{file, v4l2, FrameSource, PixelFormat, SourceError};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

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
    /// A GStreamer source: CSI camera, RTSP camera or video file (the `gstreamer` feature).
    Stream(StreamRequest),
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
        if scheme == "rtsp" || scheme == "rtsps" {
            // The camera's own query stays in its URL: not parsed as ours.
            return StreamRequest::rtsp(&scheme, rest)
                .map(SourceSpec::Stream)
                .map_err(bad);
        }
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
                let path = PathBuf::from(path);
                if is_video(&path) {
                    if fps.is_some() {
                        return Err(bad("a video plays at its own rate: no fps parameter".into()));
                    }
                    return Ok(SourceSpec::Stream(StreamRequest::Video { path, looping }));
                }
                Ok(SourceSpec::File { path, looping, fps })
            }
            "csi" => StreamRequest::csi(path, &params)
                .map(SourceSpec::Stream)
                .map_err(bad),
            other => Err(bad(format!(
                "unsupported scheme {other:?} (expected v4l2://, csi://, rtsp://, file:// or a \
                 plain path)"
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
            SourceSpec::Stream(req) => open_stream(req),
        }
    }
}

#[cfg(feature = "gstreamer")]
fn open_stream(req: &StreamRequest) -> Result<Box<dyn FrameSource>, SourceError> {
    Ok(Box::new(super::gst::GstSource::new(req.clone())?))
}

/// Without the feature: say how to get it.
#[cfg(not(feature = "gstreamer"))]
fn open_stream(req: &StreamRequest) -> Result<Box<dyn FrameSource>, SourceError> {
    Err(SourceError::Stream {
        what: req.describe(),
        reason: "this mce-device was built without GStreamer; rebuild with \
                 `cargo build --release -p mce-device --features gstreamer` (needs the system's \
                 GStreamer: libgstreamer1.0-dev, libgstreamer-plugins-base1.0-dev)"
            .into(),
        retry: false,
    })
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

pub(super) fn positive(key: &str, value: &str, max: u32) -> Result<u32, String> {
    match value.parse::<u32>() {
        Ok(n) if n > 0 && n <= max => Ok(n),
        _ => Err(format!("{key}={value:?}: expected an integer in 1..={max}")),
    }
}

#[cfg(test)]
mod tests {
    use super::super::ErrorKind;
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
    fn gstreamer_urls_parse_in_jetson_inference_syntax() {
        let csi = SourceSpec::parse("csi://0").unwrap();
        assert!(matches!(
            csi,
            SourceSpec::Stream(StreamRequest::Csi { sensor: 0, .. })
        ));
        let rtsp = SourceSpec::parse("rtsp://cam.local:8554/live?latency=100").unwrap();
        assert_eq!(
            rtsp,
            SourceSpec::Stream(StreamRequest::Rtsp {
                url: "rtsp://cam.local:8554/live".into(),
                latency_ms: 100
            })
        );
        assert_eq!(
            SourceSpec::parse("file:///v/clip.mkv?loop=true").unwrap(),
            SourceSpec::Stream(StreamRequest::Video {
                path: "/v/clip.mkv".into(),
                looping: true
            })
        );
        assert!(matches!(
            SourceSpec::parse("clip.avi").unwrap(),
            SourceSpec::Stream(StreamRequest::Video { looping: false, .. })
        ));
    }

    #[cfg(not(feature = "gstreamer"))]
    #[test]
    fn without_the_feature_a_stream_says_how_to_get_it() {
        let Err(e) = SourceSpec::parse("csi://0").unwrap().open() else {
            panic!("opened a CSI camera without GStreamer");
        };
        assert!(e.to_string().contains("--features gstreamer"), "{e}");
        assert_eq!(e.kind(), ErrorKind::Fatal);
    }

    #[test]
    fn bad_urls_say_what_is_wrong() {
        let cases = [
            ("http://cam/1", "unsupported scheme"),
            ("csi://zero", "sensor number"),
            ("rtsp:///path", "host"),
            ("file:///v/a.mp4?fps=3", "own rate"),
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
