//! gRPC `aetherops.v1.Admin`: node status and cluster membership.

use std::time::Duration;

use tonic::{Request, Response, Status};

use super::{caller, status};
use crate::limits::{Algorithm, KeyBy, LimitPolicy, Method};
use crate::proto::aetherops::v1 as pb;
use crate::proto::aetherops::v1::admin_server::Admin;
use crate::raft::{NodeId, NodeInfo};
use crate::service::admin::Membership;
use crate::service::Service;

pub struct AdminService {
    service: Service,
}

impl AdminService {
    pub fn new(service: Service) -> Self {
        AdminService { service }
    }
}

fn member((id, info): (NodeId, NodeInfo)) -> pb::Member {
    pb::Member {
        node_id: id,
        grpc_addr: info.grpc_addr,
        http_addr: info.http_addr,
        incarnation: info.incarnation,
    }
}

fn node_info(m: pb::Member) -> (NodeId, NodeInfo) {
    (
        m.node_id,
        NodeInfo {
            grpc_addr: m.grpc_addr,
            http_addr: m.http_addr,
            incarnation: m.incarnation,
        },
    )
}

fn membership(m: Membership) -> Response<pb::MembershipResponse> {
    Response::new(pb::MembershipResponse {
        log_index: m.log_index,
        voters: m.voters.into_iter().map(member).collect(),
        learners: m.learners.into_iter().map(member).collect(),
    })
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn status(
        &self,
        req: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let s = self.service.node_status(&caller(&req)).map_err(status)?;
        Ok(Response::new(pb::StatusResponse {
            node_id: s.node_id,
            grpc_addr: s.info.grpc_addr,
            http_addr: s.info.http_addr,
            role: s.role.to_owned(),
            leader_id: s.leader_id,
            term: s.term,
            last_log_index: s.last_log_index,
            commit_index: s.commit_index,
            applied_index: s.applied_index,
            voters: s.voters.into_iter().map(member).collect(),
            learners: s.learners.into_iter().map(member).collect(),
            replication: s
                .replication
                .into_iter()
                .map(|r| pb::ReplicationLag {
                    node_id: r.node_id,
                    matched_index: r.matched_index,
                    lag: r.lag,
                })
                .collect(),
            event_count: s.event_count,
            dedupe_window_secs: s.dedupe_window.map(|d| d.as_secs()),
            state_digest: format!("{:032x}", s.state_digest),
            snapshot_index: s.snapshot_index,
            purged_index: s.purged_index,
            leader_grpc_addr: s.leader_grpc_addr.unwrap_or_default(),
            incarnation: s.info.incarnation,
            security: Some(pb::Security {
                auth: s.security.auth,
                tls: s.security.tls,
                dev: s.security.dev,
                insecure: s.security.insecure,
            }),
            graphql: Some(pb::GraphqlLimits {
                enabled: s.graphql.enabled,
                max_cost: s.graphql.max_cost,
                max_depth: s.graphql.max_depth as u64,
                max_aliases: s.graphql.max_aliases as u64,
                max_fields: s.graphql.max_fields as u64,
                max_query_bytes: s.graphql.max_query_bytes as u64,
                max_batch: s.graphql.max_batch as u64,
                max_subscriptions_per_socket: s.graphql.max_subscriptions_per_socket as u64,
                max_subscriptions_per_node: s.graphql.max_subscriptions_per_node as u64,
            }),
        }))
    }

    async fn who_am_i(
        &self,
        req: Request<pb::WhoAmIRequest>,
    ) -> Result<Response<pb::WhoAmIResponse>, Status> {
        let Some(id) = self.service.whoami(&caller(&req)).map_err(status)? else {
            return Ok(Response::new(pb::WhoAmIResponse::default()));
        };
        let prefixes = |p: Option<Vec<String>>| p.map(|prefixes| pb::Prefixes { prefixes });
        Ok(Response::new(pb::WhoAmIResponse {
            auth: true,
            subject: id.subject,
            roles: id.roles.iter().map(|r| r.as_str().to_owned()).collect(),
            streams: prefixes(id.stream_prefixes),
            series: prefixes(id.series_prefixes),
            expires_at: id.expires_at,
        }))
    }

    async fn init(
        &self,
        req: Request<pb::InitRequest>,
    ) -> Result<Response<pb::InitResponse>, Status> {
        let caller = caller(&req);
        let members = req
            .into_inner()
            .members
            .into_iter()
            .map(node_info)
            .collect();
        self.service
            .init_cluster(&caller, members)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::InitResponse {}))
    }

    async fn add_learner(
        &self,
        req: Request<pb::AddLearnerRequest>,
    ) -> Result<Response<pb::MembershipResponse>, Status> {
        let caller = caller(&req);
        let r = req.into_inner();
        let (id, info) = node_info(
            r.member
                .ok_or_else(|| Status::invalid_argument("member is required"))?,
        );
        self.service
            .add_learner(&caller, id, info, r.blocking)
            .await
            .map(membership)
            .map_err(status)
    }

    async fn change_membership(
        &self,
        req: Request<pb::ChangeMembershipRequest>,
    ) -> Result<Response<pb::MembershipResponse>, Status> {
        let caller = caller(&req);
        let r = req.into_inner();
        self.service
            .change_membership(&caller, r.voters.into_iter().collect(), r.retain)
            .await
            .map(membership)
            .map_err(status)
    }

    async fn remove_node(
        &self,
        req: Request<pb::RemoveNodeRequest>,
    ) -> Result<Response<pb::MembershipResponse>, Status> {
        let caller = caller(&req);
        self.service
            .remove_node(&caller, req.into_inner().node_id)
            .await
            .map(membership)
            .map_err(status)
    }

    async fn read_index(
        &self,
        req: Request<pb::ReadIndexRequest>,
    ) -> Result<Response<pb::ReadIndexResponse>, Status> {
        let read_index = self
            .service
            .read_index(&caller(&req))
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ReadIndexResponse { read_index }))
    }

    async fn set_dedupe_window(
        &self,
        req: Request<pb::SetDedupeWindowRequest>,
    ) -> Result<Response<pb::SetDedupeWindowResponse>, Status> {
        let caller = caller(&req);
        let secs = req.into_inner().window_secs;
        let set = self
            .service
            .set_dedupe_window(&caller, Duration::from_secs(secs))
            .await
            .map_err(status)?;
        Ok(Response::new(pb::SetDedupeWindowResponse {
            window_secs: set.as_secs(),
        }))
    }

    async fn trigger_snapshot(
        &self,
        req: Request<pb::TriggerSnapshotRequest>,
    ) -> Result<Response<pb::TriggerSnapshotResponse>, Status> {
        let snapshot_index = self
            .service
            .trigger_snapshot(&caller(&req))
            .await
            .map_err(status)?;
        Ok(Response::new(pb::TriggerSnapshotResponse {
            snapshot_index,
        }))
    }

    async fn state_digest(
        &self,
        req: Request<pb::StateDigestRequest>,
    ) -> Result<Response<pb::StateDigestResponse>, Status> {
        let scan = self
            .service
            .state_digest(&caller(&req))
            .await
            .map_err(status)?;
        Ok(Response::new(pb::StateDigestResponse {
            applied_index: scan.applied.map(|l| l.index),
            chained_digest: format!("{:032x}", scan.chained),
            scan_digest: format!("{:032x}", scan.scan),
            records: scan.records,
        }))
    }

    async fn set_limit(
        &self,
        req: Request<pb::SetLimitRequest>,
    ) -> Result<Response<pb::SetLimitResponse>, Status> {
        let caller = caller(&req);
        let policy = req
            .into_inner()
            .policy
            .ok_or_else(|| Status::invalid_argument("policy is required"))?;
        let replaced = self
            .service
            .set_limit(&caller, limit_policy(policy)?)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::SetLimitResponse { replaced }))
    }

    async fn delete_limit(
        &self,
        req: Request<pb::DeleteLimitRequest>,
    ) -> Result<Response<pb::DeleteLimitResponse>, Status> {
        let caller = caller(&req);
        self.service
            .delete_limit(&caller, &req.into_inner().name)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::DeleteLimitResponse {}))
    }

    async fn limit_status(
        &self,
        req: Request<pb::LimitStatusRequest>,
    ) -> Result<Response<pb::LimitStatusResponse>, Status> {
        let s = self.service.limit_status(&caller(&req)).map_err(status)?;
        Ok(Response::new(pb::LimitStatusResponse {
            node_id: s.node_id,
            factor: s.factor,
            utilization: s.utilization,
            policies: s
                .policies
                .into_iter()
                .map(|p| pb::PolicyStatus {
                    name: p.name,
                    share: f64::from(p.share_ppm) / 1e6,
                    leased: p.leased,
                    tokens_left: p.tokens_left,
                    keys: p.keys as u64,
                    demand_per_sec: p.demand_per_sec,
                    admits_per_sec: p.admits_per_sec,
                    refused: p.refused,
                    shadow_refused: p.shadow_refused,
                })
                .collect(),
        }))
    }

    async fn list_limits(
        &self,
        req: Request<pb::ListLimitsRequest>,
    ) -> Result<Response<pb::ListLimitsResponse>, Status> {
        let caller = caller(&req);
        let consistency = super::convert::consistency(req.into_inner().consistency)?;
        let policies = self
            .service
            .list_limits(&caller, consistency)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ListLimitsResponse {
            policies: policies.into_iter().map(limit_policy_out).collect(),
        }))
    }
}

fn limit_policy(p: pb::LimitPolicy) -> Result<LimitPolicy, Status> {
    let bad = |e: String| Status::invalid_argument(e);
    let methods = p
        .methods
        .iter()
        .map(|m| m.parse::<Method>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(bad)?;
    let key = if p.key.is_empty() {
        KeyBy::Shared
    } else {
        p.key.parse().map_err(bad)?
    };
    let algorithm = match p.algorithm {
        Some(pb::limit_policy::Algorithm::TokenBucket(t)) => Algorithm::TokenBucket {
            burst: t.burst,
            refill_millis: t.refill_millis,
        },
        Some(pb::limit_policy::Algorithm::SlidingWindow(w)) => Algorithm::SlidingWindow {
            limit: w.limit,
            window_ms: w.window_ms,
            window_count: w.window_count,
        },
        None => {
            return Err(Status::invalid_argument(
                "a policy needs a token bucket or a sliding window",
            ))
        }
    };
    Ok(LimitPolicy {
        name: p.name,
        methods,
        key,
        algorithm,
        shadow: p.shadow,
    })
}

pub(crate) fn limit_policy_out(p: LimitPolicy) -> pb::LimitPolicy {
    pb::LimitPolicy {
        name: p.name,
        methods: p.methods.iter().map(|m| m.as_str().to_owned()).collect(),
        key: p.key.as_str().to_owned(),
        algorithm: Some(match p.algorithm {
            Algorithm::TokenBucket {
                burst,
                refill_millis,
            } => pb::limit_policy::Algorithm::TokenBucket(pb::TokenBucket {
                burst,
                refill_millis,
            }),
            Algorithm::SlidingWindow {
                limit,
                window_ms,
                window_count,
            } => pb::limit_policy::Algorithm::SlidingWindow(pb::SlidingWindow {
                limit,
                window_ms,
                window_count,
            }),
        }),
        shadow: p.shadow,
    }
}
