//! Who installed which path, in little memory: every path the dpkg lists name, as a tree of
//! its components (`/usr` → `lib` → `libc.so.6`) where each node stores its parent, its name
//! and its owner, and one hash table finds a child by (parent, name).
//!
//! Why not a map of whole paths: the 133,000 paths of a desktop machine took ~40 MB as
//! `PathBuf` keys (and as many again in each package's file list), held for as long as a pack
//! or a server ran; a pack of a file of no package peaked at 67 MB instead of 31. As a tree,
//! shared prefixes are stored once: the index is a few MB, and the file lists stay on disk
//! (`info/PKG.list`), read again for the few packages an image holds.

use hashbrown::HashTable;
use std::hash::{BuildHasher, Hasher};

/// Who owns a path: a package's index, or one of these.
const NOBODY: u32 = u32::MAX;
/// Several packages list it (a shared folder): that says nothing of what a file needs.
const SHARED: u32 = u32::MAX - 1;

#[derive(Debug, Clone, Copy)]
struct Node {
    parent: u32,
    /// The name's bytes: `names[start..start + len]`.
    start: u32,
    len: u32,
    owner: u32,
}

/// The index. Node 0 is `/`.
#[derive(Debug)]
pub(super) struct Owners {
    nodes: Vec<Node>,
    names: Vec<u8>,
    children: HashTable<u32>,
}

impl Default for Owners {
    fn default() -> Owners {
        Owners {
            nodes: vec![Node {
                parent: 0,
                start: 0,
                len: 0,
                owner: NOBODY,
            }],
            names: Vec::new(),
            children: HashTable::new(),
        }
    }
}

/// FxHash: the paths are the machine's own, not an attacker's, and it is several times
/// faster than SipHash on short names.
fn hash(parent: u32, name: &[u8]) -> u64 {
    let mut h = rustc_hash::FxBuildHasher.build_hasher();
    h.write_u32(parent);
    h.write(name);
    h.finish()
}

impl Owners {
    /// Records that package `owner` lists `path` (clean, absolute, already resolved).
    pub(super) fn insert(&mut self, path: &[u8], owner: usize) {
        let node = self.node(path);
        let owner = u32::try_from(owner).unwrap_or(SHARED);
        let slot = &mut self.nodes[node as usize].owner;
        *slot = match *slot {
            NOBODY => owner,
            o if o == owner => o,
            _ => SHARED,
        };
    }

    /// Makes `owner` the only owner of `path`, whoever listed it (a diversion).
    pub(super) fn set(&mut self, path: &[u8], owner: usize) {
        let node = self.node(path);
        self.nodes[node as usize].owner = u32::try_from(owner).unwrap_or(SHARED);
    }

    /// The one package that lists `path`; `None` for a path none or several list.
    pub(super) fn get(&self, path: &[u8]) -> Option<usize> {
        let mut node = 0u32;
        for name in components(path) {
            node = self.child(node, name)?;
        }
        match self.nodes[node as usize].owner {
            NOBODY | SHARED => None,
            o => Some(o as usize),
        }
    }

    fn name(&self, node: u32) -> &[u8] {
        let n = &self.nodes[node as usize];
        &self.names[n.start as usize..(n.start + n.len) as usize]
    }

    fn child(&self, parent: u32, name: &[u8]) -> Option<u32> {
        self.children
            .find(hash(parent, name), |&n| {
                self.nodes[n as usize].parent == parent && self.name(n) == name
            })
            .copied()
    }

    /// The node of `path`, made (with its parents) if it is new.
    fn node(&mut self, path: &[u8]) -> u32 {
        let mut node = 0u32;
        for name in components(path) {
            node = match self.child(node, name) {
                Some(n) => n,
                None => self.add(node, name),
            };
        }
        node
    }

    fn add(&mut self, parent: u32, name: &[u8]) -> u32 {
        let id = self.nodes.len() as u32;
        self.nodes.push(Node {
            parent,
            start: self.names.len() as u32,
            len: name.len() as u32,
            owner: NOBODY,
        });
        self.names.extend_from_slice(name);
        let (nodes, names) = (&self.nodes, &self.names);
        self.children
            .insert_unique(hash(parent, name), id, |&n| hash_node(nodes, names, n));
        id
    }
}

fn hash_node(nodes: &[Node], names: &[u8], n: u32) -> u64 {
    let node = &nodes[n as usize];
    hash(
        node.parent,
        &names[node.start as usize..(node.start + node.len) as usize],
    )
}

fn components(path: &[u8]) -> impl Iterator<Item = &[u8]> {
    path.split(|&b| b == b'/').filter(|c| !c.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_owner_many_owners_and_none() {
        let mut o = Owners::default();
        o.insert(b"/usr/bin/make", 3);
        o.insert(b"/usr/bin", 3);
        o.insert(b"/usr/bin", 4);
        o.insert(b"/usr/bin/make", 3);
        o.set(b"/usr/bin/cc", 7);
        assert_eq!(o.get(b"/usr/bin/make"), Some(3));
        assert_eq!(o.get(b"/usr/bin/cc"), Some(7));
        assert_eq!(o.get(b"/usr/bin"), None, "listed by two packages");
        assert_eq!(o.get(b"/usr"), None, "listed by none");
        assert_eq!(o.get(b"/usr/bin/mak"), None);
        assert_eq!(o.get(b"/usr/bin/make/x"), None);
        assert_eq!(o.get(b"/bin/make"), None);
    }
}
