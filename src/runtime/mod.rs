//! What an image needs to run, besides the files it was asked to hold.
//!
//! | file | owns |
//! |---|---|
//! | `elf.rs` | a dynamic ELF object's interpreter and libraries, found as ld.so finds them (reads headers only) |
//! | `packages.rs` | the package-database interface: owners, dependencies, which package files may be packed |
//! | `dpkg.rs` | that interface over Debian's dpkg database, read directly |
//! | `owners.rs` | dpkg's path → package index, as a tree of path components (a few MB, not 40) |
//! | `base.rs` | the minimal base of an image with packages: users, groups, `/tmp`, the CA bundle |

pub mod base;
pub mod dpkg;
pub mod elf;
mod owners;
pub mod packages;
