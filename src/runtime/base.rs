//! The minimal base of an image whose program came from packages: what a Debian system has
//! that no package ships, and without which common programs fail in an empty root (`ssh`:
//! "No user exists for uid 0"; `curl`: no CA bundle; `git`: no `/tmp`).
//!
//! Everything here is a constant, or the host's CA bundle (which holds the certificates the
//! host trusts, added ones included: that is what makes `curl https://` behave as it does
//! on the host).

use std::path::Path;

/// `root` and `nobody`, as Debian's base-passwd has them.
pub const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n";

/// Their groups (`nogroup` is Debian's name for nobody's).
pub const GROUP: &str = "root:x:0:\nnogroup:x:65534:\n";

/// Look users, groups and hosts up in files (and hosts in DNS): the modules a static list
/// needs, which libc has built in.
pub const NSSWITCH: &str = "passwd: files\ngroup: files\nshadow: files\n\
hosts: files dns\nnetworks: files\nprotocols: files\nservices: files\nethers: files\nrpc: files\n";

/// Generated files: (path in the image, content).
pub const FILES: [(&str, &str); 3] = [
    ("/etc/passwd", PASSWD),
    ("/etc/group", GROUP),
    ("/etc/nsswitch.conf", NSSWITCH),
];

/// Directories with the mode programs expect: `/tmp` sticky and writable by all, root's
/// home its own.
pub const DIRS: [(&str, u32); 2] = [("/tmp", 0o1777), ("/root", 0o700)];

/// The shell programs run commands with (`system`, `popen`, git's helpers): the package that
/// owns it comes with every image that has packages, as Debian's Essential packages are
/// needed without being declared.
pub const SHELL: &str = "bin/sh";

/// The host's CA bundle, where Debian's `update-ca-certificates` writes it (and where
/// OpenSSL, curl and git look), if the host has one.
pub const CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// The CA bundle of the machine rooted at `root`, if it has one.
pub fn ca_bundle(root: &Path) -> Option<std::path::PathBuf> {
    let path = root.join(CA_BUNDLE.trim_start_matches('/'));
    path.is_file().then_some(path)
}
