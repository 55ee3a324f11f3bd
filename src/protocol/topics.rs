//! Every MQTT topic name, built and read in one place: a folder's data, status and cmd
//! topics ([`Topics`]), the prefix-level filters and volume topics, and [`classify`],
//! which tells them apart by their last levels as the broker's ACL does. The strings
//! are the wire format (docs/PROTOCOL.md): changing one breaks every older node.

/// Level of a node's data topic, `{prefix}/{folder}/v1/{node}`, and of the volume
/// topics, `{prefix}/v1/volumes/…`.
const V1: &str = "v1";
/// Level of a node's public status topic, `{prefix}/{folder}/status/{node}`.
const STATUS: &str = "status";
/// Level of a node's public pending list, `{prefix}/{folder}/pending/{node}`.
const PENDING: &str = "pending";
/// Last level of a folder's public command topic, `{prefix}/{folder}/cmd`.
const CMD: &str = "cmd";
/// Level of the volume announcements, `{prefix}/v1/volumes/{name}`.
const VOLUMES: &str = "volumes";
/// Level of the mount reports, `{prefix}/v1/volume-mounts/{node}`.
const VOLUME_MOUNTS: &str = "volume-mounts";

/// Topic names for one folder.
#[derive(Debug, Clone)]
pub struct Topics {
    pub prefix: String,
    pub folder: String,
}

impl Topics {
    pub fn new(prefix: &str, folder: &str) -> Topics {
        Topics {
            prefix: prefix.to_string(),
            folder: folder.to_string(),
        }
    }

    /// Internal data topic of `node`: `{prefix}/{folder}/v1/{node}`.
    pub fn data(&self, node: &str) -> String {
        format!("{}/{}/{V1}/{node}", self.prefix, self.folder)
    }

    /// Every node's data topic of this folder: `{prefix}/{folder}/v1/+`.
    pub fn data_filter(&self) -> String {
        self.data("+")
    }

    /// Public, retained status topic of `node`: `{prefix}/{folder}/status/{node}`.
    pub fn status(&self, node: &str) -> String {
        format!("{}/{}/{STATUS}/{node}", self.prefix, self.folder)
    }

    /// Public, retained list of what `node` has not brought in sync:
    /// `{prefix}/{folder}/pending/{node}`.
    pub fn pending(&self, node: &str) -> String {
        format!("{}/{}/{PENDING}/{node}", self.prefix, self.folder)
    }

    /// Public command topic (no MAC): `{prefix}/{folder}/cmd`.
    pub fn cmd(&self) -> String {
        format!("{}/{}/{CMD}", self.prefix, self.folder)
    }

    /// The sending node of a data topic, if `topic` is one of this folder's.
    pub fn data_sender<'a>(&self, topic: &'a str) -> Option<&'a str> {
        let rest = topic
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix('/')?
            .strip_prefix(self.folder.as_str())?
            .strip_prefix('/')?
            .strip_prefix(V1)?
            .strip_prefix('/')?;
        (!rest.is_empty() && !rest.contains('/')).then_some(rest)
    }
}

/// All status topics under `prefix` (every folder, every node): `{prefix}/+/status/+`.
pub fn all_status_filter(prefix: &str) -> String {
    Topics::new(prefix, "+").status("+")
}

/// All pending lists under `prefix`: `{prefix}/+/pending/+`.
pub fn all_pending_filter(prefix: &str) -> String {
    Topics::new(prefix, "+").pending("+")
}

/// The retained announcement of volume `name`: `{prefix}/v1/volumes/{name}`.
pub fn volume(prefix: &str, name: &str) -> String {
    format!("{prefix}/{V1}/{VOLUMES}/{name}")
}

/// Every volume announcement: `{prefix}/v1/volumes/+`.
pub fn volumes_filter(prefix: &str) -> String {
    volume(prefix, "+")
}

/// The retained mount report of `node`: `{prefix}/v1/volume-mounts/{node}`.
pub fn mounts(prefix: &str, node: &str) -> String {
    format!("{prefix}/{V1}/{VOLUME_MOUNTS}/{node}")
}

/// Every mount report: `{prefix}/v1/volume-mounts/+`.
pub fn mounts_filter(prefix: &str) -> String {
    mounts(prefix, "+")
}

/// What follows `{prefix}/v1/volumes/` in `topic` (the volume's name when well formed;
/// the announcement's own check refuses the rest).
pub fn volume_name<'a>(prefix: &str, topic: &'a str) -> Option<&'a str> {
    under(prefix, VOLUMES, topic)
}

/// What follows `{prefix}/v1/volume-mounts/` in `topic` (the reporting node's id when
/// well formed).
pub fn mounts_node<'a>(prefix: &str, topic: &'a str) -> Option<&'a str> {
    under(prefix, VOLUME_MOUNTS, topic)
}

fn under<'a>(prefix: &str, level: &str, topic: &'a str) -> Option<&'a str> {
    topic
        .strip_prefix(prefix)?
        .strip_prefix('/')?
        .strip_prefix(V1)?
        .strip_prefix('/')?
        .strip_prefix(level)?
        .strip_prefix('/')
}

/// A topic told apart by its last levels, whatever the prefix (which has at least one
/// level, possibly empty). Levels are not checked for emptiness: the caller decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind<'a> {
    /// `{prefix}/v1/volumes/{name}`
    Volume { name: &'a str },
    /// `{prefix}/v1/volume-mounts/{node}`
    Mounts { node: &'a str },
    /// `{prefix}/{folder}/cmd`
    Cmd { folder: &'a str },
    /// `{prefix}/{folder}/v1/{node}`
    Data { folder: &'a str, node: &'a str },
    /// `{prefix}/{folder}/status/{node}`
    Status { folder: &'a str, node: &'a str },
    /// `{prefix}/{folder}/pending/{node}`
    Pending { folder: &'a str, node: &'a str },
}

/// What `topic` is, judged in this order when shapes overlap: volume, mount report,
/// cmd, data, status, pending (so `p/v1/volumes/cmd` is a volume and `p/f/v1/cmd` a folder's
/// cmd topic). Reads from the end without allocating.
pub fn classify(topic: &str) -> Option<Kind<'_>> {
    let mut levels = topic.rsplitn(4, '/');
    let last = levels.next()?;
    let second = levels.next()?;
    let third = levels.next()?;
    let has_prefix = levels.next().is_some();
    match (third, second, last) {
        (V1, VOLUMES, name) if has_prefix => Some(Kind::Volume { name }),
        (V1, VOLUME_MOUNTS, node) if has_prefix => Some(Kind::Mounts { node }),
        (_, folder, CMD) => Some(Kind::Cmd { folder }),
        (folder, V1, node) if has_prefix => Some(Kind::Data { folder, node }),
        (folder, STATUS, node) if has_prefix => Some(Kind::Status { folder, node }),
        (folder, PENDING, node) if has_prefix => Some(Kind::Pending { folder, node }),
        _ => None,
    }
}

/// The folder and node of a topic shaped like a data topic, `{prefix}/{folder}/v1/{node}`,
/// whatever else it could also be (a node may be called `cmd`).
pub fn data_parts(topic: &str) -> Option<(&str, &str)> {
    folder_and_node(topic, V1)
}

/// The folder and node of a topic shaped like a status topic,
/// `{prefix}/{folder}/status/{node}`.
pub fn status_parts(topic: &str) -> Option<(&str, &str)> {
    folder_and_node(topic, STATUS)
}

/// The folder and node of a topic shaped like a pending topic,
/// `{prefix}/{folder}/pending/{node}`.
pub fn pending_parts(topic: &str) -> Option<(&str, &str)> {
    folder_and_node(topic, PENDING)
}

fn folder_and_node<'a>(topic: &'a str, level: &str) -> Option<(&'a str, &'a str)> {
    let mut levels = topic.rsplitn(4, '/');
    let node = levels.next()?;
    let kind = levels.next()?;
    let folder = levels.next()?;
    (kind == level && levels.next().is_some()).then_some((folder, node))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_the_wire_format() {
        let t = Topics::new("mqsync", "docs");
        assert_eq!(t.data("n1"), "mqsync/docs/v1/n1");
        assert_eq!(t.data_filter(), "mqsync/docs/v1/+");
        assert_eq!(t.status("n1"), "mqsync/docs/status/n1");
        assert_eq!(t.cmd(), "mqsync/docs/cmd");
        assert_eq!(t.pending("n1"), "mqsync/docs/pending/n1");
        assert_eq!(all_status_filter("a/b"), "a/b/+/status/+");
        assert_eq!(all_pending_filter("a/b"), "a/b/+/pending/+");
        assert_eq!(volume("mqsync", "web"), "mqsync/v1/volumes/web");
        assert_eq!(volumes_filter("mqsync"), "mqsync/v1/volumes/+");
        assert_eq!(mounts("mqsync", "n2"), "mqsync/v1/volume-mounts/n2");
        assert_eq!(mounts_filter("mqsync"), "mqsync/v1/volume-mounts/+");
    }

    #[test]
    fn data_sender_takes_only_this_folders_data_topics() {
        let t = Topics::new("a/b", "docs");
        assert_eq!(t.data_sender("a/b/docs/v1/n1"), Some("n1"));
        assert_eq!(t.data_sender(&t.data("n2")), Some("n2"));
        for other in [
            "a/b/docs/v1/",
            "a/b/docs/v1/n1/x",
            "a/b/other/v1/n1",
            "a/b/docs/status/n1",
            "a/bdocs/v1/n1",
            "x/a/b/docs/v1/n1",
            "a/b/docs",
        ] {
            assert_eq!(t.data_sender(other), None, "{other}");
        }
    }

    #[test]
    fn volume_and_mount_topics_are_read_back() {
        assert_eq!(volume_name("p", &volume("p", "web")), Some("web"));
        assert_eq!(mounts_node("p", &mounts("p", "n1")), Some("n1"));
        // The rest is handed on as it is; the document's own check refuses it.
        assert_eq!(volume_name("p", "p/v1/volumes/a/b"), Some("a/b"));
        assert_eq!(volume_name("p", "p/v1/volume-mounts/n1"), None);
        assert_eq!(mounts_node("p", "p/v1/volumes/web"), None);
        assert_eq!(volume_name("p", "q/v1/volumes/web"), None);
    }

    #[test]
    fn classify_reads_the_last_levels_in_the_broker_rules_order() {
        use Kind::*;
        let table: &[(&str, Option<Kind>)] = &[
            (
                "mqsync/f/v1/n1",
                Some(Data {
                    folder: "f",
                    node: "n1",
                }),
            ),
            (
                "a/b/mqsync/f/v1/n1",
                Some(Data {
                    folder: "f",
                    node: "n1",
                }),
            ),
            (
                "mqsync/f/status/n1",
                Some(Status {
                    folder: "f",
                    node: "n1",
                }),
            ),
            (
                "mqsync/f/pending/n1",
                Some(Pending {
                    folder: "f",
                    node: "n1",
                }),
            ),
            ("mqsync/f/pending/cmd", Some(Cmd { folder: "pending" })),
            ("f/pending/n1", None),
            ("mqsync/f/cmd", Some(Cmd { folder: "f" })),
            ("/f/cmd", Some(Cmd { folder: "f" })),
            ("/cmd", None),
            ("mqsync/v1/volumes/web", Some(Volume { name: "web" })),
            ("mqsync/v1/volume-mounts/n1", Some(Mounts { node: "n1" })),
            // Overlapping shapes: the earlier rule wins.
            ("mqsync/v1/volumes/cmd", Some(Volume { name: "cmd" })),
            ("mqsync/f/v1/cmd", Some(Cmd { folder: "v1" })),
            ("mqsync/f/status/cmd", Some(Cmd { folder: "status" })),
            // Without a prefix level only cmd topics exist.
            ("v1/volumes/web", None),
            ("f/v1/n1", None),
            ("v1/volumes/cmd", Some(Cmd { folder: "volumes" })),
            // Empty levels are the caller's to judge.
            (
                "mqsync/f/v1/",
                Some(Data {
                    folder: "f",
                    node: "",
                }),
            ),
            ("mqsync/v1/volumes/", Some(Volume { name: "" })),
            ("mqsync/f/other/n1", None),
            ("v1/n1", None),
            ("", None),
        ];
        for (topic, want) in table {
            assert_eq!(classify(topic), *want, "{topic}");
        }
        let t = Topics::new("p", "docs");
        assert_eq!(
            classify(&t.data("n1")),
            Some(Data {
                folder: "docs",
                node: "n1"
            })
        );
        assert_eq!(
            classify(&t.status("n1")),
            Some(Status {
                folder: "docs",
                node: "n1"
            })
        );
        assert_eq!(classify(&t.cmd()), Some(Cmd { folder: "docs" }));
    }

    #[test]
    fn data_and_status_parts_need_their_level_and_a_prefix() {
        assert_eq!(data_parts("a/b/f/v1/cmd"), Some(("f", "cmd")));
        assert_eq!(data_parts("p/f/status/n1"), None);
        assert_eq!(data_parts("f/v1/n1"), None);
        assert_eq!(status_parts("p/f/status/n1"), Some(("f", "n1")));
        assert_eq!(status_parts("/f/status/n1"), Some(("f", "n1")));
        assert_eq!(status_parts("p/f/v1/n1"), None);
        assert_eq!(status_parts("f/status/n1"), None);
        assert_eq!(pending_parts("p/f/pending/n1"), Some(("f", "n1")));
        assert_eq!(pending_parts("p/f/status/n1"), None);
        assert_eq!(pending_parts("f/pending/n1"), None);
    }
}
