//! `mce-device --help` reads as help (no rustdoc syntax) and ends with a worked example.

#[test]
fn help_texts_are_plain_and_show_an_example() {
    let bin = env!("CARGO_BIN_EXE_mce-device");
    mce_testkit::assert_help_is_plain(bin);
    let top = &mce_testkit::help_texts(bin)[0].1;
    for want in [
        "Example:",
        "mce-device register",
        "mce-device serve --source v4l2://",
    ] {
        assert!(top.contains(want), "no {want:?} in:\n{top}");
    }
}
