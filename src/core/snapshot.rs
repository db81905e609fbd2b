//! A compiled, immutable policy set indexed by namespace, and `check`: request in, decision out; pure, cannot fail.

use std::collections::HashMap;
use std::net::IpAddr;

use super::decision::{Decision, DryRunOutcome, PolicyMatch, Reason};
use super::identity::Identity;
use super::path::{self, PathOptions};
use super::policy::{Action, Attributes, Policy};
use super::request::{Request, SpiffeId};
use super::workload::{Workload, WorkloadTable};

/// Options of the engine that come from the server's settings.
#[derive(Debug, Clone, Default)]
pub struct EngineOptions {
    pub path: PathOptions,
    /// How many proxies' entries to skip from the right of `x-forwarded-for` to find the
    /// client address (`remote.ip`); 0 takes the direct peer and never reads the header.
    pub trusted_proxy_hops: usize,
}

/// Everything a check needs, built whole and swapped in at once.
#[derive(Debug, Default)]
pub struct Snapshot {
    policies: PolicyIndex,
    workloads: WorkloadTable,
    options: EngineOptions,
}

/// Policies grouped so that a check looks only at its workload's namespace and the mesh-wide ones.
#[derive(Debug, Default)]
struct PolicyIndex {
    mesh_wide: Bucket,
    by_namespace: HashMap<Box<str>, Bucket>,
    len: usize,
}

/// The policies of one namespace, by action, each list in name order.
#[derive(Debug, Default)]
struct Bucket {
    deny: Vec<Policy>,
    allow: Vec<Policy>,
    audit: Vec<Policy>,
    dry_run_deny: Vec<Policy>,
    dry_run_allow: Vec<Policy>,
}

impl Bucket {
    fn insert(&mut self, policy: Policy) {
        let list = match (policy.action, policy.dry_run) {
            (Action::Deny, false) => &mut self.deny,
            (Action::Allow, false) => &mut self.allow,
            (Action::Deny, true) => &mut self.dry_run_deny,
            (Action::Allow, true) => &mut self.dry_run_allow,
            (Action::Audit, _) => &mut self.audit,
        };
        list.push(policy);
    }
}

impl Snapshot {
    /// Indexes compiled policies. Policies without a namespace or in `root_namespace` apply to
    /// every workload.
    pub fn new(
        mut policies: Vec<Policy>,
        workloads: WorkloadTable,
        options: EngineOptions,
        root_namespace: &str,
    ) -> Self {
        policies.sort_by(|a, b| a.id.cmp(&b.id));
        let len = policies.len();
        let mut index = PolicyIndex { len, ..PolicyIndex::default() };
        for policy in policies {
            let namespace = &*policy.id.namespace;
            if namespace.is_empty() || namespace == root_namespace {
                index.mesh_wide.insert(policy);
            } else {
                index.by_namespace.entry(namespace.into()).or_default().insert(policy);
            }
        }
        Self { policies: index, workloads, options }
    }

    /// How many policies the set holds.
    pub fn policy_count(&self) -> usize {
        self.policies.len
    }

    /// Decides one request in Istio's order: DENY, then ALLOW; AUDIT and dry-run policies are
    /// evaluated alongside and never change the verdict.
    pub fn check(&self, request: &Request<'_>) -> Decision {
        self.decide(request, None)
    }

    /// Authorizes a request made by `identity` (`None`: no token).
    pub(crate) fn decide(&self, request: &Request<'_>, identity: Option<&Identity>) -> Decision {
        let workload = self.workloads.resolve(request);
        let normalized = match &request.http {
            Some(http) => match path::normalize(http.path, self.options.path) {
                Ok(normalized) => Some(normalized),
                Err(_) => return Decision::new(Reason::InvalidPath, None),
            },
            None => None,
        };
        let mut attributes = Attributes {
            request,
            source: SpiffeId::parse(request.source.principal),
            remote_ip: self.remote_ip(request),
            path: normalized.as_ref().map_or("", |normalized| &normalized.path),
            identity,
        };
        let decision = self.authorize(&workload, &attributes);
        // A path with an encoded slash must be allowed under both of its readings.
        if let Some(other_reading) =
            normalized.as_ref().and_then(|normalized| normalized.with_decoded_slashes.as_deref())
            && decision.is_allow()
        {
            attributes.path = other_reading;
            let other = self.authorize(&workload, &attributes);
            if !other.is_allow() {
                return other;
            }
        }
        decision
    }

    fn authorize(&self, workload: &Workload<'_>, attributes: &Attributes<'_>) -> Decision {
        let buckets =
            [Some(&self.policies.mesh_wide), workload.namespace.and_then(|ns| self.policies.by_namespace.get(ns))];
        let applicable = |pick: fn(&Bucket) -> &Vec<Policy>| {
            buckets.into_iter().flatten().flat_map(pick).filter(|policy| policy.selects(workload))
        };
        let first_match = |pick: fn(&Bucket) -> &Vec<Policy>| {
            applicable(pick).find_map(|policy| {
                policy.first_matching_rule(attributes).map(|rule| PolicyMatch { policy: policy.id.clone(), rule })
            })
        };

        let mut decision = if let Some(matched) = first_match(|b| &b.deny) {
            Decision::new(Reason::DeniedByPolicy, Some(matched))
        } else if let Some(matched) = first_match(|b| &b.allow) {
            Decision::new(Reason::AllowedByPolicy, Some(matched))
        } else if applicable(|b| &b.allow).next().is_some() {
            Decision::new(Reason::NoAllowMatch, None)
        } else {
            Decision::new(Reason::NoPolicies, None)
        };
        decision.audit = first_match(|b| &b.audit);
        decision.dry_run = if let Some(matched) = first_match(|b| &b.dry_run_deny) {
            Some(DryRunOutcome { would_allow: false, policy: Some(matched) })
        } else if applicable(|b| &b.dry_run_allow).next().is_some() {
            let matched = first_match(|b| &b.dry_run_allow);
            Some(DryRunOutcome { would_allow: matched.is_some(), policy: matched })
        } else {
            None
        };
        decision
    }

    /// The client address: the direct peer, or with trusted proxies the entry of
    /// `x-forwarded-for` that many hops from its right end.
    fn remote_ip(&self, request: &Request<'_>) -> Option<IpAddr> {
        let hops = self.options.trusted_proxy_hops;
        if hops == 0 {
            return request.source.address;
        }
        let forwarded = request.http.as_ref().and_then(|http| http.header("x-forwarded-for"));
        forwarded
            .and_then(|chain| chain.rsplit(',').nth(hops - 1))
            .and_then(|entry| entry.trim().parse().ok())
            .or(request.source.address)
    }
}
