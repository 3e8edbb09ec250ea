//! The license notices of the crates linked into this binary, written at build time by
//! `build.rs` from the dependency tree. `quinistry licenses` prints them, and the self-image
//! carries them at [`NOTICES_PATH`], so whoever redistributes the image redistributes them.

/// Every linked crate with its license, then each license text they ship.
pub const NOTICES: &str = include_str!(concat!(env!("OUT_DIR"), "/THIRD-PARTY-NOTICES"));

/// Where the self-image holds them: where Debian keeps a package's copyright notices.
pub const NOTICES_PATH: &str = "/usr/share/doc/quinistry/copyright";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notices_name_the_linked_crates_with_their_texts_and_no_build_only_crates() {
        assert!(NOTICES.starts_with("quinistry "), "{}", &NOTICES[..80]);
        for linked in ["tokio ", "hyper ", "zlib-rs ", "sha2 ", "zstd-sys "] {
            assert!(
                NOTICES.lines().any(|l| l.starts_with(linked)),
                "{linked}is linked but not listed"
            );
        }
        // The Zlib license text of zlib-rs travels with it.
        assert!(NOTICES.contains("This notice may not be removed or altered"));
        // Proc macros, build and dev dependencies put no code in the binary.
        for absent in [
            "thiserror-impl ",
            "clap_derive ",
            "serde_derive ",
            "criterion ",
            "rcgen ",
        ] {
            assert!(
                !NOTICES.lines().any(|l| l.starts_with(absent)),
                "{absent}is listed but not linked"
            );
        }
    }
}
