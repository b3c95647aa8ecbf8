//! CSI cameras, RTSP cameras and video files through GStreamer (the `gstreamer` feature; the
//! system's GStreamer 1.x). URLs and pipelines: [`super::stream_spec`].
//!
//! Same rules as the V4L2 source: live sources (CSI, RTSP) connect lazily, and every error (no
//! camera, refused connection, stream lost, no frame for a while) drops the pipeline and comes
//! back as a retryable error, so the capture loop backs off and the next call reconnects. What
//! cannot get better is fatal: GStreamer lacks an element (e.g. `nvarguscamerasrc` off a Jetson),
//! a video file is missing or undecodable. A video ends ([`FrameSource::next_frame`] `None`) or,
//! with `loop=true`, starts over. Frames above [`MAX_FRAME_PIXELS`] are refused from their caps.

use super::stream_spec::StreamRequest;
use super::{Captured, FrameSource, SourceError, MAX_FRAME_PIXELS};
pub use gstreamer;
use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app::AppSink;
use image::RgbImage;

/// How long one pull may block before the capture loop gets control back.
const PULL_TIMEOUT: gst::ClockTime = gst::ClockTime::from_seconds(2);
/// Pulls without a frame after which a live connection is dropped and made again.
const STALLED_AFTER: u32 = 5;

/// A GStreamer source.
pub struct GstSource {
    req: StreamRequest,
    conn: Option<Connection>,
    /// Pulls in a row that timed out on this connection.
    empty_pulls: u32,
}

struct Connection {
    pipeline: gst::Pipeline,
    sink: AppSink,
}

impl Drop for Connection {
    fn drop(&mut self) {
        let _ = self.pipeline.set_state(gst::State::Null);
    }
}

impl GstSource {
    /// A source for `req`; GStreamer is initialised now, a video file must exist now, cameras
    /// connect at the first frame.
    pub fn new(req: StreamRequest) -> Result<Self, SourceError> {
        gst::init().map_err(|e| SourceError::Stream {
            what: req.describe(),
            reason: format!("GStreamer cannot start: {e}"),
            retry: false,
        })?;
        if let StreamRequest::Video { path, .. } = &req {
            if !path.is_file() {
                return Err(SourceError::NotFound { path: path.clone() });
            }
        }
        Ok(Self {
            req,
            conn: None,
            empty_pulls: 0,
        })
    }

    fn error(&self, reason: impl Into<String>, retry: bool) -> SourceError {
        SourceError::Stream {
            what: self.req.describe(),
            reason: reason.into(),
            retry: retry && self.req.is_live(),
        }
    }

    /// Build the pipeline and start it playing.
    fn connect(&self) -> Result<Connection, SourceError> {
        let description = self.req.pipeline();
        let element = gst::parse::launch(&description).map_err(|e| {
            let missing = e.kind::<gst::ParseError>() == Some(gst::ParseError::NoSuchElement);
            let hint = if missing {
                " (a GStreamer plugin is not installed; csi:// needs NVIDIA's Jetson plugins)"
            } else {
                ""
            };
            self.error(format!("pipeline `{description}`: {e}{hint}"), !missing)
        })?;
        let pipeline = element
            .downcast::<gst::Pipeline>()
            .map_err(|_| self.error("the description is not a pipeline", false))?;
        if let (Some(src), Some(location)) = (pipeline.by_name("src"), self.req.location()) {
            src.set_property("location", location);
        }
        let sink = pipeline
            .by_name("sink")
            .and_then(|s| s.downcast::<AppSink>().ok())
            .ok_or_else(|| self.error("the pipeline has no appsink named sink", false))?;
        let conn = Connection { pipeline, sink };
        if conn.pipeline.set_state(gst::State::Playing).is_err() {
            let why = bus_error(&conn.pipeline).unwrap_or_else(|| "cannot start playing".into());
            return Err(self.error(why, true));
        }
        Ok(conn)
    }

    /// One pull on the open connection: a frame, the end of the stream, or nothing yet.
    fn pull(&mut self) -> Result<Pulled, SourceError> {
        let conn = self.conn.as_ref().expect("connected");
        if let Some(sample) = conn.sink.try_pull_sample(PULL_TIMEOUT) {
            return to_image(&sample)
                .map(Pulled::Frame)
                .map_err(|reason| SourceError::Corrupt {
                    what: self.req.describe(),
                    reason,
                });
        }
        if let Some(why) = bus_error(&conn.pipeline) {
            return Err(self.error(why, true));
        }
        Ok(if conn.sink.is_eos() {
            Pulled::End
        } else {
            Pulled::Nothing
        })
    }

    /// A video back at its first frame.
    fn rewind(&mut self) -> Result<(), SourceError> {
        let conn = self.conn.as_ref().expect("connected");
        conn.pipeline
            .seek_simple(
                gst::SeekFlags::FLUSH | gst::SeekFlags::KEY_UNIT,
                gst::ClockTime::ZERO,
            )
            .map_err(|e| self.error(format!("cannot loop back to the start: {e}"), false))
    }
}

enum Pulled {
    Frame(RgbImage),
    End,
    Nothing,
}

/// The first error message waiting on the pipeline's bus, with its details.
fn bus_error(pipeline: &gst::Pipeline) -> Option<String> {
    let bus = pipeline.bus()?;
    let msg = bus.pop_filtered(&[gst::MessageType::Error])?;
    match msg.view() {
        gst::MessageView::Error(e) => Some(match e.debug() {
            Some(debug) => format!("{} ({debug})", e.error()),
            None => e.error().to_string(),
        }),
        _ => None,
    }
}

/// A packed-RGB sample as an image (rows may be padded to a stride).
fn to_image(sample: &gst::Sample) -> Result<RgbImage, String> {
    let caps = sample.caps().ok_or("a sample without caps")?;
    let info = gstreamer_video::VideoInfo::from_caps(caps).map_err(|e| e.to_string())?;
    let (w, h) = (info.width(), info.height());
    if u64::from(w) * u64::from(h) > MAX_FRAME_PIXELS {
        return Err(format!(
            "{w}x{h} is above the frame size limit of {MAX_FRAME_PIXELS} pixels"
        ));
    }
    let buffer = sample.buffer().ok_or("a sample without a buffer")?;
    let map = buffer.map_readable().map_err(|e| e.to_string())?;
    let stride = info.stride()[0] as usize;
    let row = w as usize * 3;
    if stride < row || map.len() < stride * (h as usize - 1) + row {
        return Err(format!("a {w}x{h} RGB frame in {} bytes", map.len()));
    }
    let mut data = Vec::with_capacity(row * h as usize);
    for y in 0..h as usize {
        data.extend_from_slice(&map[y * stride..y * stride + row]);
    }
    RgbImage::from_raw(w, h, data).ok_or_else(|| "frame size mismatch".into())
}

impl FrameSource for GstSource {
    fn describe(&self) -> String {
        self.req.describe()
    }

    fn next_frame(&mut self) -> Result<Option<Captured>, SourceError> {
        loop {
            if self.conn.is_none() {
                self.conn = Some(self.connect()?);
                self.empty_pulls = 0;
            }
            match self.pull() {
                Ok(Pulled::Frame(image)) => {
                    self.empty_pulls = 0;
                    return Ok(Some(Captured { image, label: None }));
                }
                Ok(Pulled::End) => match &self.req {
                    StreamRequest::Video { looping: true, .. } => self.rewind()?,
                    StreamRequest::Video { .. } => return Ok(None),
                    _ => {
                        self.conn = None;
                        return Err(self.error("the stream ended", true));
                    }
                },
                Ok(Pulled::Nothing) => {
                    // Control goes back to the capture loop every pull; the connection is
                    // dropped only once it has stalled for good.
                    self.empty_pulls += 1;
                    let stalled = self.empty_pulls >= STALLED_AFTER;
                    if stalled {
                        self.conn = None;
                    }
                    return Err(SourceError::Stream {
                        what: self.req.describe(),
                        reason: if stalled {
                            format!("no frame for {STALLED_AFTER} x 2 s; connecting again")
                        } else {
                            "no frame within 2 s".into()
                        },
                        retry: self.req.is_live() || !stalled,
                    });
                }
                Err(e) => {
                    if !matches!(e, SourceError::Corrupt { .. }) {
                        self.conn = None;
                    }
                    return Err(e);
                }
            }
        }
    }
}
