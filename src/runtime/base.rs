//! The minimal base of an image whose program came from packages: what a Debian system has
//! that no package ships, and without which common programs fail in an empty root (`ssh`:
//! "No user exists for uid 0"; `nginx`: no user `www-data`; `curl`: no CA bundle; `git`: no
//! `/tmp`).
//!
//! The accounts are Debian's static ones (base-passwd's master files, as `/etc/passwd` is
//! made from them at install) and the machine's system accounts that the image's packages
//! made at install time. No password field leaves the machine: every account says `x`, and
//! there is no `/etc/shadow`. The CA bundle is the host's (it holds the certificates the
//! host trusts, added ones included: that is what makes `curl https://` behave as it does on
//! the host).

use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};

use super::packages::{PackageDb, PkgId};

/// `root` and `nobody`, as Debian's base-passwd has them: the accounts of a machine without
/// base-passwd's master files.
pub const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n";

/// Their groups (`nogroup` is Debian's name for nobody's).
pub const GROUP: &str = "root:x:0:\nnogroup:x:65534:\n";

/// Where base-passwd keeps the static accounts every Debian system starts from (www-data,
/// daemon, mail, ...).
pub const PASSWD_MASTER: &str = "usr/share/base-passwd/passwd.master";
pub const GROUP_MASTER: &str = "usr/share/base-passwd/group.master";

/// Ids Debian gives the system accounts that packages create (`adduser --system`):
/// `/etc/adduser.conf`'s FIRST_SYSTEM_UID to LAST_SYSTEM_UID.
pub const SYSTEM_IDS: std::ops::RangeInclusive<u32> = 100..=999;

/// Look users, groups and hosts up in files (and hosts in DNS): the modules a static list
/// needs, which libc has built in.
pub const NSSWITCH: &str = "passwd: files\ngroup: files\nshadow: files\n\
hosts: files dns\nnetworks: files\nprotocols: files\nservices: files\nethers: files\nrpc: files\n";

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
pub fn ca_bundle(root: &Path) -> Option<PathBuf> {
    let path = root.join(CA_BUNDLE.trim_start_matches('/'));
    path.is_file().then_some(path)
}

/// An image's `/etc/passwd` and `/etc/group`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accounts {
    pub passwd: String,
    pub group: String,
}

impl Accounts {
    /// The accounts of an image holding `packages`, whose files the machine has owned by
    /// `uids` and `gids`: base-passwd's static accounts, then each system account of the
    /// machine (id in [`SYSTEM_IDS`]) that owns a file of those packages or that one of their
    /// maintainer scripts creates (`adduser`, `useradd`, `addgroup`, `groupadd`), with its
    /// group. Same machine, same packages: same bytes.
    pub fn of(
        db: &dyn PackageDb,
        packages: &[PkgId],
        uids: &BTreeSet<u32>,
        gids: &BTreeSet<u32>,
    ) -> Accounts {
        let root = db.root();
        let read = |p: &str| std::fs::read_to_string(root.join(p)).ok();
        let (mut passwd, mut group) = match (read(PASSWD_MASTER), read(GROUP_MASTER)) {
            (Some(p), Some(g)) => (entries(&p), entries(&g)),
            _ => (entries(PASSWD), entries(GROUP)),
        };
        let created = created_accounts(db, packages);
        let host_passwd = entries(&read("etc/passwd").unwrap_or_default());
        let host_group = entries(&read("etc/group").unwrap_or_default());
        let known = |list: &Vec<Vec<String>>, name: &str| list.iter().any(|e| e[0] == name);
        let mut wanted_gids: BTreeSet<u32> = BTreeSet::new();
        for user in &host_passwd {
            let (Some(uid), Some(gid)) = (id(user, 2), id(user, 3)) else {
                continue;
            };
            let made = uids.contains(&uid) || created.contains(user[0].as_str());
            if SYSTEM_IDS.contains(&uid) && made && !known(&passwd, &user[0]) {
                passwd.push(user.clone());
                wanted_gids.insert(gid);
            }
        }
        for g in &host_group {
            let Some(gid) = id(g, 2) else { continue };
            let made = gids.contains(&gid)
                || wanted_gids.contains(&gid)
                || created.contains(g[0].as_str());
            if SYSTEM_IDS.contains(&gid) && made && !known(&group, &g[0]) {
                group.push(g.clone());
            }
        }
        // Members only of accounts the image has.
        let users: HashSet<String> = passwd.iter().map(|u| u[0].clone()).collect();
        for g in &mut group {
            if let Some(members) = g.get_mut(3) {
                let kept: Vec<&str> = members.split(',').filter(|m| users.contains(*m)).collect();
                *members = kept.join(",");
            }
        }
        Accounts {
            passwd: lines(passwd),
            group: lines(group),
        }
    }
}

/// The colon-separated fields of each line of a passwd or group file, the password field
/// always `x`: a hash never leaves the machine.
fn entries(text: &str) -> Vec<Vec<String>> {
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| {
            let mut fields: Vec<String> = l.split(':').map(str::to_owned).collect();
            if let Some(password) = fields.get_mut(1) {
                *password = "x".to_owned();
            }
            fields
        })
        .filter(|f| f.len() >= 3)
        .collect()
}

fn id(entry: &[String], field: usize) -> Option<u32> {
    entry.get(field)?.parse().ok()
}

fn lines(entries: Vec<Vec<String>>) -> String {
    entries.iter().map(|e| e.join(":") + "\n").collect()
}

/// The account names the packages' maintainer scripts create: the words on their `adduser`,
/// `useradd`, `addgroup` and `groupadd` lines (the last word that is a plausible name is
/// the account; every word is kept, and only names the machine has count).
fn created_accounts(db: &dyn PackageDb, packages: &[PkgId]) -> HashSet<String> {
    let mut names = HashSet::new();
    for &package in packages {
        for which in ["preinst", "postinst"] {
            let Some(script) = db.script(package, which) else {
                continue;
            };
            for line in script.lines() {
                let words: Vec<&str> = line
                    .split(|c: char| c.is_whitespace() || c == '"' || c == '\'' || c == ';')
                    .filter(|w| !w.is_empty())
                    .collect();
                let creates = words
                    .iter()
                    .any(|w| matches!(*w, "adduser" | "useradd" | "addgroup" | "groupadd"));
                if creates {
                    names.extend(words.iter().map(|w| (*w).to_owned()));
                }
            }
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accounts_are_base_passwds_and_the_system_accounts_the_packages_made() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        let write = |path: &str, body: &str| {
            let p = root.join(path);
            std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
            std::fs::write(p, body).expect("write");
        };
        write(
            PASSWD_MASTER,
            "root:*:0:0:root:/root:/bin/bash\nwww-data:*:33:33:www-data:/var/www:/usr/sbin/nologin\n",
        );
        write(GROUP_MASTER, "root:*:0:\nwww-data:*:33:\n");
        write(
            "etc/passwd",
            "root:$6$secret$hash:0:0:root:/root:/bin/bash\n\
             svc:x:120:120::/var/lib/svc:/usr/sbin/nologin\n\
             stranger:x:121:121::/nonexistent:/usr/sbin/nologin\n\
             human:x:1000:1000::/home/human:/bin/bash\n",
        );
        write(
            "etc/group",
            "root:x:0:\nsvc:x:120:human,svc\nstranger:x:121:\nhuman:x:1000:\n",
        );
        write(
            "var/lib/dpkg/status",
            "Package: svc-pkg\nStatus: install ok installed\n\n\
             Package: quiet\nStatus: install ok installed\n",
        );
        write(
            "var/lib/dpkg/info/svc-pkg.postinst",
            "#!/bin/sh\nif ! getent passwd svc; then\n  adduser --system --group --home /var/lib/svc svc\nfi\n",
        );
        let db = super::super::dpkg::Database::load(root)
            .expect("load")
            .expect("a database");
        let pkg = |n: &str| db.find(n).expect("installed");
        let none = BTreeSet::new();
        let with = Accounts::of(&db, &[pkg("svc-pkg")], &none, &none);
        assert_eq!(
            with.passwd,
            "root:x:0:0:root:/root:/bin/bash\nwww-data:x:33:33:www-data:/var/www:/usr/sbin/nologin\n\
             svc:x:120:120::/var/lib/svc:/usr/sbin/nologin\n"
        );
        assert_eq!(with.group, "root:x:0:\nwww-data:x:33:\nsvc:x:120:svc\n");
        // Without the package that made it, only base-passwd's; an account owning the
        // packages' files comes too.
        let without = Accounts::of(&db, &[pkg("quiet")], &none, &none);
        assert!(!without.passwd.contains("svc"), "{}", without.passwd);
        let owning = Accounts::of(&db, &[pkg("quiet")], &BTreeSet::from([121]), &none);
        assert!(
            owning.passwd.contains("stranger:x:121"),
            "{}",
            owning.passwd
        );
        assert!(owning.group.contains("stranger:x:121"), "{}", owning.group);
        assert!(!owning.passwd.contains("human"));
    }

    #[test]
    fn password_fields_never_leave_the_machine() {
        let e = entries("root:$6$salt$hash:0:0:root:/root:/bin/bash\n# comment\n\nbad\n");
        assert_eq!(e.len(), 1);
        assert_eq!(lines(e), "root:x:0:0:root:/root:/bin/bash\n");
    }
}
