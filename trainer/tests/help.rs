//! `mce-train --help` and each subcommand's help read as help: no rustdoc syntax.

#[test]
fn help_texts_are_plain() {
    mce_testkit::assert_help_is_plain(env!("CARGO_BIN_EXE_mce-train"));
}
