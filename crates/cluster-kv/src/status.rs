//! The cluster's health as one member sees it.

use crate::client::ClusterKv;
use crate::error::KvError;

/// The members, the leader, and who answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterStatus {
    /// Every member in the cluster's configuration, reachable or not.
    pub members: Vec<MemberInfo>,
    /// The leader's member id, as the answering member knows it; `None`
    /// while there is none (no quorum, or an election running).
    pub leader: Option<u64>,
    /// The id of the member that answered.
    pub responder: u64,
    /// That member's etcd version.
    pub version: String,
    /// The store's revision on that member.
    pub revision: i64,
    /// The Raft term on that member.
    pub raft_term: u64,
}

/// One etcd member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberInfo {
    /// Its id.
    pub id: u64,
    /// Its `--name` (empty for a member that was added but never started).
    pub name: String,
    /// Where clients reach it.
    pub client_urls: Vec<String>,
    /// Where the other members reach it.
    pub peer_urls: Vec<String>,
    /// Whether it is a non-voting learner.
    pub is_learner: bool,
}

impl ClusterStatus {
    /// The member that answered.
    pub fn responder_member(&self) -> Option<&MemberInfo> {
        self.members.iter().find(|m| m.id == self.responder)
    }

    /// The leader, if there is one.
    pub fn leader_member(&self) -> Option<&MemberInfo> {
        let leader = self.leader?;
        self.members.iter().find(|m| m.id == leader)
    }
}

impl ClusterKv {
    /// Asks one member (any that answers) for the cluster's status.
    pub async fn status(&self) -> Result<ClusterStatus, KvError> {
        let status = self
            .inner
            .call("status", "", |mut c| async move { c.status().await })
            .await?;
        let members = self
            .inner
            .call(
                "member-list",
                "",
                |mut c| async move { c.member_list().await },
            )
            .await?;
        Ok(ClusterStatus {
            members: members
                .members()
                .iter()
                .map(|m| MemberInfo {
                    id: m.id(),
                    name: m.name().to_owned(),
                    client_urls: m.client_urls().to_vec(),
                    peer_urls: m.peer_urls().to_vec(),
                    is_learner: m.is_learner(),
                })
                .collect(),
            leader: Some(status.leader()).filter(|&id| id != 0),
            responder: status.header().map_or(0, |h| h.member_id()),
            version: status.version().to_owned(),
            revision: status.header().map_or(0, |h| h.revision()),
            raft_term: status.raft_term(),
        })
    }
}
