//! What an image needs to run, besides the files it was asked to hold.
//!
//! | file | owns |
//! |---|---|
//! | `elf.rs` | a dynamic ELF object's interpreter and libraries, found as ld.so finds them (reads headers only) |

pub mod elf;
