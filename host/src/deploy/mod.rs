//! Deploys: a new component for an entity type is compiled, validated by
//! replaying real history (`validate`), recorded in the registry and
//! activated atomically; rollbacks go through the same validation. This is
//! the one way a component becomes a type's behavior; [`Node::open`]
//! restores the recorded deploys itself.
//!
//! Owns [`DeployError`], [`DeployResult`], [`Versions`] and the deploy half
//! of [`Node`]'s API. Deploys of one node run one at a time.

use std::sync::{Arc, Weak};
use std::time::Duration;

use crate::behavior::Behavior;
use crate::node::{Node, NodeInner, RegisterError};
use crate::registry::{
    DeployAction, DeployOutcome, DeployRecord, Deployment, Registry, RegistryError, sha256_hex,
};
use crate::runtime::{GuestLimits, LoadError};

mod exemplars;
mod progress;
mod validate;

pub use exemplars::{Exemplar, ExemplarError, Exemplars, MAX_EXEMPLARS_PER_TYPE};
pub use progress::{DeployPhase, DeployProgress, ProgressGuard};

pub use validate::{
    REPORT_LIST_MAX, ReplayFailure, StateDifference, ValidateError, ValidationReport,
};

/// Why a deploy failed; the type's active behavior stays.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeployError {
    /// The component or type name was refused.
    #[error(transparent)]
    Register(#[from] RegisterError),
    /// The registry could not store it.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// Replaying history through the new version failed; the active version
    /// stays. The report names the entities and sequence numbers.
    #[error("deploy refused: {}", .0.summary())]
    Refused(Box<ValidationReport>),
    /// Validation could not read the journal.
    #[error("validation could not run: {0}")]
    Validate(#[from] ValidateError),
    /// A rollback names a deploy that does not exist, or there is none to go back to.
    #[error("no such version: {0}")]
    NoSuchVersion(String),
}

/// How often the exemplars of every deployed type are brought up to date
/// in the background, so that a deploy scans only what was written since.
const EXEMPLAR_SCAN_EVERY: Duration = Duration::from_secs(30);

/// Keeps the node's exemplars close to the head of each type's journal:
/// a scan of every deployed type shortly after start (a node upgraded with
/// a long history pays its one full scan there, not in its first deploy)
/// and then every [`EXEMPLAR_SCAN_EVERY`]. Its cost is one look at each
/// event written; a failed scan is retried at the next tick (a deploy scans
/// the rest itself).
pub(crate) fn scan_exemplars_in_background(node: Weak<NodeInner>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval_at(
            tokio::time::Instant::now() + Duration::from_secs(1),
            EXEMPLAR_SCAN_EVERY,
        );
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(node) = node.upgrade() else { break };
            if node.is_shutting_down() {
                break;
            }
            for d in node.registry.all_active() {
                let started = std::time::Instant::now();
                match node
                    .exemplars
                    .refresh(&node.env.journal, &d.entity_type)
                    .await
                {
                    Ok(s) if s.scanned > 0 => tracing::debug!(
                        entity_type = %d.entity_type,
                        scanned = s.scanned,
                        exemplars = s.exemplars.len(),
                        ms = started.elapsed().as_millis() as u64,
                        "exemplars brought up to date"
                    ),
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(entity_type = %d.entity_type, error = %e, "exemplar scan failed")
                    }
                }
            }
        }
    });
}

/// The phase of a deploy that waits for another deploy of the node.
const WAITING: &str = "waiting for an earlier deploy on the node to finish";
/// The phase after a compile the compiled-code cache spared.
const FROM_CACHE: &str = "loaded from the compiled-code cache";
/// The phase of a deploy that records and installs the new version.
const ACTIVATING: &str = "activating";

/// The phase of a deploy that compiles a component of `len` bytes (or finds
/// it in the compiled-code cache: not known until it is found).
fn compiling(len: usize) -> String {
    format!("compiling {} KiB component", len / 1024)
}

impl From<LoadError> for DeployError {
    fn from(e: LoadError) -> Self {
        DeployError::Register(RegisterError::Load(e))
    }
}

/// What a deploy (or a check, or a rollback) did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeployResult {
    /// The active deploy afterwards (for a check: the active one, if any).
    pub deployment: Option<Deployment>,
    /// True if the active deploy changed.
    pub changed: bool,
    /// What replaying history showed (empty when nothing was replayed).
    pub report: ValidationReport,
}

/// Every version of a type ([`Node::versions`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Versions {
    /// Every deploy, oldest first (deploy numbers from 1).
    pub deploys: Vec<Deployment>,
    /// The deploy number of the active one.
    pub active: Option<u32>,
    /// Every deploy, refusal and rollback, oldest first.
    pub records: Vec<DeployRecord>,
}

impl Node {
    fn now_ms(&self) -> u64 {
        self.inner.clock().wall_ms()
    }

    /// Deploys a component to an entity type. The node compiles and checks
    /// it, then replays the whole history (from #1) of up to `[node]
    /// deploy_sample` existing entities of the type through it, checks the
    /// state it folds against their snapshots of its state schema, and has
    /// it decode the exemplars the node keeps of every (version, kind) of
    /// event in the type's journal. Any failure refuses the deploy
    /// ([`DeployError::Refused`], recorded in the history) and the active
    /// version stays. Otherwise the component is stored (by content; it
    /// survives restarts) as the type's next version and activated: the
    /// command in flight finishes on the old version, every later one runs on
    /// the new. With `check`, everything but the activation runs and nothing
    /// changes. Bytes identical to the active version change nothing.
    pub async fn deploy_checked(
        &self,
        entity_type: &str,
        wasm: Vec<u8>,
        check: bool,
    ) -> Result<DeployResult, DeployError> {
        crate::node::check_type_name(entity_type)?;
        let progress = self.inner.deploy_progress.begin(entity_type, WAITING);
        let _one_at_a_time = self.inner.deploying.lock().await;
        let active = self.inner.registry.active(entity_type);
        let registered = self.inner.entity_type(entity_type);
        if let Some(a) = &active
            && registered.is_some()
            && a.hash == sha256_hex(&wasm)
        {
            return Ok(DeployResult {
                deployment: active.clone(),
                changed: false,
                report: ValidationReport::default(),
            });
        }
        // The bytes are written (and their writeback started) while the
        // component compiles; the registry makes them durable at the cutover.
        let store = (!check).then(|| {
            let (inner, bytes) = (self.inner.clone(), wasm.clone());
            tokio::task::spawn_blocking(move || inner.registry.stage_component(&bytes))
        });
        progress.set(compiling(wasm.len()), 0, 0);
        let candidate = self
            .load(entity_type, wasm.clone(), registered.is_none(), &progress)
            .await?;
        if let Some(store) = store {
            store.await.map_err(|e| RegistryError::Io {
                path: "components".into(),
                source: std::io::Error::other(e.to_string()),
            })??;
        }
        let descriptor = candidate.descriptor().clone();
        let report = self.validate(entity_type, &candidate, &progress).await?;
        if !report.passed() {
            if !check {
                let record = DeployRecord {
                    entity_type: entity_type.to_owned(),
                    action: DeployAction::Deploy,
                    deploy: None,
                    hash: sha256_hex(&wasm),
                    behavior_version: descriptor.version.clone(),
                    at_ms: self.now_ms(),
                    outcome: DeployOutcome::Refused,
                    report: report.clone(),
                };
                self.registry_io(move |r| r.refused(record)).await?;
                tracing::warn!(entity_type, report = %report.summary(), "deploy refused");
            }
            return Err(DeployError::Refused(Box::new(report)));
        }
        if check {
            return Ok(DeployResult {
                deployment: active,
                changed: false,
                report,
            });
        }
        progress.set(ACTIVATING, 0, 0);
        let deployment = {
            let (ty, d, rep) = (entity_type.to_owned(), descriptor.clone(), report.clone());
            let at_ms = self.now_ms();
            self.registry_io(move |r| r.record_with(&ty, &wasm, &d, at_ms, Some(rep)))
                .await?
        };
        self.inner.install(entity_type, candidate).await?;
        tracing::info!(entity_type, deploy = deployment.deploy, report = %report.summary(), "deployed");
        Ok(DeployResult {
            deployment: Some(deployment),
            changed: true,
            report,
        })
    }

    /// Replays sampled history of a type through `candidate`, comparing with
    /// the active version ([`validate::validate`]).
    async fn validate(
        &self,
        entity_type: &str,
        candidate: &Arc<dyn Behavior>,
        progress: &ProgressGuard<'_>,
    ) -> Result<ValidationReport, DeployError> {
        let active = self.inner.entity_type(entity_type).map(|t| t.behavior());
        let inputs = validate::Inputs {
            journal: &self.inner.env.journal,
            snapshots: &self.inner.env.snapshots,
            exemplars: &self.inner.exemplars,
            entity_type,
            sample: self.inner.config.node.deploy_sample,
            progress: Some(progress),
        };
        Ok(validate::validate(inputs, candidate, active.as_ref()).await?)
    }

    /// Runs a registry update (file writes and fsyncs) on a blocking thread,
    /// not on a worker that serves commands.
    async fn registry_io<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Registry) -> Result<T, RegistryError> + Send + 'static,
    ) -> Result<T, RegistryError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || f(&inner.registry))
            .await
            .unwrap_or_else(|e| {
                Err(RegistryError::Io {
                    path: "deployments.json".into(),
                    source: std::io::Error::other(e.to_string()),
                })
            })
    }

    /// [`Node::deploy_checked`] without `check`; returns the active version.
    pub async fn deploy(
        &self,
        entity_type: &str,
        wasm: Vec<u8>,
    ) -> Result<Deployment, DeployError> {
        let r = self.deploy_checked(entity_type, wasm, false).await?;
        r.deployment
            .ok_or_else(|| DeployError::NoSuchVersion(entity_type.to_owned()))
    }

    /// Activates an earlier version of a type (`to`, or else the newest
    /// version below the active one), after the same validation as a deploy.
    pub async fn rollback(
        &self,
        entity_type: &str,
        to: Option<u32>,
    ) -> Result<DeployResult, DeployError> {
        let progress = self.inner.deploy_progress.begin(entity_type, WAITING);
        let _one_at_a_time = self.inner.deploying.lock().await;
        let active = self.inner.registry.active(entity_type).ok_or_else(|| {
            DeployError::NoSuchVersion(format!("`{entity_type}` was never deployed"))
        })?;
        let target = match to {
            Some(v) => v,
            None if active.deploy > 1 => active.deploy - 1,
            None => {
                return Err(DeployError::NoSuchVersion(format!(
                    "`{entity_type}` has no deploy before #{}",
                    active.deploy
                )));
            }
        };
        let deployment = self
            .inner
            .registry
            .get(entity_type, target)
            .ok_or_else(|| {
                DeployError::NoSuchVersion(format!("`{entity_type}` has no deploy #{target}"))
            })?;
        if deployment.deploy == active.deploy {
            return Ok(DeployResult {
                deployment: Some(active),
                changed: false,
                report: ValidationReport::default(),
            });
        }
        let wasm = self.inner.registry.component(&deployment.hash)?;
        let first = self.inner.entity_type(entity_type).is_none();
        progress.set(compiling(wasm.len()), 0, 0);
        let candidate = self.load(entity_type, wasm, first, &progress).await?;
        let report = self.validate(entity_type, &candidate, &progress).await?;
        if !report.passed() {
            let record = DeployRecord {
                entity_type: entity_type.to_owned(),
                action: DeployAction::Rollback,
                deploy: Some(target),
                hash: deployment.hash.clone(),
                behavior_version: deployment.behavior_version.clone(),
                at_ms: self.now_ms(),
                outcome: DeployOutcome::Refused,
                report: report.clone(),
            };
            self.registry_io(move |r| r.refused(record)).await?;
            tracing::warn!(entity_type, deploy = target, report = %report.summary(), "rollback refused");
            return Err(DeployError::Refused(Box::new(report)));
        }
        progress.set(ACTIVATING, 0, 0);
        let deployment = {
            let (ty, rep) = (entity_type.to_owned(), report.clone());
            let at_ms = self.now_ms();
            self.registry_io(move |r| r.activate(&ty, target, at_ms, rep))
                .await?
        };
        self.inner.install(entity_type, candidate).await?;
        tracing::info!(entity_type, deploy = target, "rolled back");
        Ok(DeployResult {
            deployment: Some(deployment),
            changed: true,
            report,
        })
    }

    /// Every version of a type: its deploys oldest first, the active deploy
    /// number, and every deploy, refusal and rollback.
    pub fn versions(&self, entity_type: &str) -> Versions {
        let registry = &self.inner.registry;
        Versions {
            deploys: registry.history(entity_type),
            active: registry.active(entity_type).map(|d| d.deploy),
            records: registry.records(entity_type),
        }
    }

    /// What the deploy (or check, or rollback) of `entity_type` in flight
    /// on this node is doing now; `None` when there is none.
    pub fn deploy_progress(&self, entity_type: &str) -> Option<DeployPhase> {
        self.inner.deploy_progress.current(entity_type)
    }

    /// The active deploy of every deployed type.
    pub fn deployments(&self) -> Vec<Deployment> {
        self.inner.registry.all_active()
    }

    /// Activates the recorded deploy of every type in the node's registry
    /// (what a restarted node served before). Part of [`Node::open`].
    pub(crate) async fn restore_deployments(&self) -> Result<(), DeployError> {
        for d in self.inner.registry.all_active() {
            let wasm = self.inner.registry.component(&d.hash)?;
            // The node does not serve the type yet: no need to yield.
            let progress = self
                .inner
                .deploy_progress
                .begin(&d.entity_type, compiling(wasm.len()));
            let behavior = self.load(&d.entity_type, wasm, true, &progress).await?;
            self.inner.install(&d.entity_type, behavior).await?;
        }
        Ok(())
    }

    /// Compiles and checks a component on the background pool: at nice 10
    /// (a hot swap's compile yields to the commands being served), or, when
    /// `first` (the node serves no version of the type: a restart's restore,
    /// a type's first deploy, a cluster member activating a type), with the
    /// pool raised to nice 0 for the compile, because nothing waits on it
    /// but the type itself and on a busy machine nice 10 starved it
    /// (docs/BENCHMARKS.md).
    async fn load(
        &self,
        entity_type: &str,
        wasm: Vec<u8>,
        first: bool,
        progress: &ProgressGuard<'_>,
    ) -> Result<Arc<dyn Behavior>, RegisterError> {
        let settings = self.inner.config.settings_for(entity_type);
        let limits = GuestLimits {
            call_timeout: settings.supervision.call_timeout,
            memory_limit: settings.supervision.memory_limit,
            ..GuestLimits::default()
        };
        let engine = self.inner.engine.clone();
        // Set from a blocking thread: it waits for every pool thread.
        let priority = |normal| {
            tokio::task::spawn_blocking(move || crate::runtime::set_background_priority(normal))
        };
        if first {
            let _ = priority(true).await;
        }
        let behavior = crate::runtime::background(move || engine.load(&wasm, limits)).await;
        if first {
            let _ = priority(false).await;
        }
        let behavior =
            behavior.ok_or_else(|| LoadError::Engine("the compile task failed".into()))??;
        if behavior.code_source() == crate::runtime::CodeSource::Cache {
            progress.set(FROM_CACHE, 0, 0);
        }
        Ok(Arc::new(behavior))
    }
}
