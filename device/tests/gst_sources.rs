//! The GStreamer sources (`--features gstreamer`): a video the test writes itself with GStreamer's
//! own test source (`videotestsrc`, JPEG in AVI) played to its end and looped, through the source
//! API and through the real `mce-device serve`; a CSI camera without NVIDIA's plugins is a clear
//! fatal error; an RTSP camera that is not there is retried with back-off, the service degraded.
#![cfg(feature = "gstreamer")]

mod serve_support;

use gst::prelude::*;
use mce_device::service::source::gst::gstreamer as gst;
use mce_device::service::source::{ErrorKind, FrameSource, SourceSpec};
use serve_support::{untrained, Server};
use std::path::Path;
use std::time::Duration;

const FRAMES: u32 = 20;

/// `FRAMES` frames of SMPTE colour bars, 320x240 at 20 frames/s, as motion JPEG in AVI.
fn write_video(path: &Path) {
    gst::init().unwrap();
    let pipeline = gst::parse::launch(&format!(
        "videotestsrc num-buffers={FRAMES} ! video/x-raw,width=320,height=240,framerate=20/1 ! \
         jpegenc ! avimux ! filesink name=out"
    ))
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    pipeline
        .by_name("out")
        .unwrap()
        .set_property("location", path.to_str().unwrap());
    pipeline.set_state(gst::State::Playing).unwrap();
    let bus = pipeline.bus().unwrap();
    let msg = bus
        .timed_pop_filtered(
            gst::ClockTime::from_seconds(30),
            &[gst::MessageType::Eos, gst::MessageType::Error],
        )
        .expect("the writer finished");
    assert!(matches!(msg.view(), gst::MessageView::Eos(_)), "{msg:?}");
    pipeline.set_state(gst::State::Null).unwrap();
}

fn open(url: &str) -> Box<dyn FrameSource> {
    SourceSpec::parse(url).unwrap().open().unwrap()
}

#[test]
fn a_written_video_plays_to_its_end_and_loops() {
    let dir = tempfile::tempdir().unwrap();
    let video = dir.path().join("bars.avi");
    write_video(&video);

    let mut source = open(&format!("file://{}", video.display()));
    assert!(source.describe().contains("bars.avi"));
    let mut n = 0;
    while let Some(frame) = source.next_frame().unwrap() {
        assert_eq!(frame.image.dimensions(), (320, 240));
        // SMPTE bars: white on the left, then yellow (levels depend on the colour conversion).
        let [r, g, b] = frame.image.get_pixel(10, 10).0;
        assert!(r > 150 && g > 150 && b > 150, "white bar: {r} {g} {b}");
        let [r, g, b] = frame.image.get_pixel(68, 10).0;
        assert!(r > 150 && g > 150 && b < 60, "yellow bar: {r} {g} {b}");
        n += 1;
    }
    assert_eq!(n, FRAMES, "every frame once, then the end");

    let mut looping = open(&format!("file://{}?loop=true", video.display()));
    for i in 0..FRAMES + 10 {
        let f = looping.next_frame().unwrap();
        assert!(f.is_some(), "a looping video ended at frame {i}");
    }

    let missing = SourceSpec::parse("file:///nonexistent/clip.mp4")
        .unwrap()
        .open();
    let e = missing.err().expect("a missing video fails at open");
    assert!(e.to_string().contains("/nonexistent/clip.mp4"), "{e}");
}

#[test]
fn a_csi_camera_needs_nvidias_plugins_and_a_dead_rtsp_camera_is_retried() {
    gst::init().unwrap();
    if gst::ElementFactory::find("nvarguscamerasrc").is_none() {
        let e = open("csi://0").next_frame().unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Fatal, "{e}");
        assert!(e.to_string().contains("nvarguscamerasrc"), "{e}");
    }
    let port = closed_port();
    let e = open(&format!("rtsp://127.0.0.1:{port}/live"))
        .next_frame()
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Retry, "{e}");
    assert!(
        e.to_string().contains("RTSP camera rtsp://127.0.0.1"),
        "{e}"
    );
}

/// A loopback port nothing listens on.
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

#[test]
fn the_service_streams_a_video_and_degrades_on_a_dead_camera() {
    let dir = tempfile::tempdir().unwrap();
    let video = dir.path().join("bars.avi");
    write_video(&video);
    let registry = dir.path().join("registry");

    let source = format!("file://{}?loop=true", video.display());
    let server = Server::start(&untrained(&registry, &source), &[]).expect("serve starts");
    let h = server.wait_health(Duration::from_secs(120), |h| {
        h["frames"]["processed"].as_u64().unwrap_or(0) >= 2
    });
    assert_eq!(h["source"]["state"], "streaming", "{h}");
    assert_eq!(h["status"], "ok", "{h}");
    let results = server.get_json("/results");
    assert_eq!(results["frame"]["width"], 320, "{results}");
    server.signal("TERM");
    let (status, log) = server.wait(Duration::from_secs(30));
    assert!(status.success(), "{log}");

    let rtsp = format!("rtsp://127.0.0.1:{}/live", closed_port());
    let server = Server::start(&untrained(&registry, &rtsp), &[]).expect("serve starts");
    let h = server.wait_health(Duration::from_secs(60), |h| {
        h["source"]["state"] == "reconnecting"
    });
    assert_eq!(h["status"], "degraded", "{h}");
    assert!(
        h["source"]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("RTSP camera")),
        "{h}"
    );
    server.signal("TERM");
    let (status, log) = server.wait(Duration::from_secs(30));
    assert!(status.success(), "{log}");
}
