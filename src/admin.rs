//! `magnetar admin …`: a thin client of the admin REST API, shaped like `pulsar-admin`.
//!
//! `magnetar admin [--url URL] tenants|namespaces|topics <command> …`. The URL comes from
//! `--url`, else the environment variable `MAGNETAR_ADMIN_URL`, else the configuration key
//! `admin.url` (default `http://127.0.0.1:8080`). JSON answers are printed pretty, lists one
//! item per line; an answer other than 2xx prints its reason on stderr and exits 1.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use clap::{ArgGroup, Args, Subcommand};
use magnetar_broker::topic_name::{NamespaceName, TopicName};
use serde_json::{Value, json};

use crate::cli::{ConfigArg, EXIT_OK};
use crate::config::Config;

/// Environment variable naming the admin URL when `--url` is not given.
pub const ADMIN_URL_ENV: &str = "MAGNETAR_ADMIN_URL";

/// Flags and subcommands of `magnetar admin`.
#[derive(Debug, Args)]
pub struct AdminArgs {
    /// URL of the admin REST API [env: MAGNETAR_ADMIN_URL] [config: admin.url]
    /// [default: http://127.0.0.1:8080].
    #[arg(long, value_name = "URL", global = true)]
    pub url: Option<String>,

    #[command(flatten)]
    pub config: ConfigArg,

    #[command(subcommand)]
    pub command: AdminCommand,
}

#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Tenants: list, get, create, update, delete.
    #[command(subcommand)]
    Tenants(TenantsCommand),
    /// Namespaces and their policies.
    #[command(subcommand)]
    Namespaces(NamespacesCommand),
    /// Persistent topics, partitioned topics and subscriptions.
    #[command(subcommand)]
    Topics(TopicsCommand),
    /// The bookies and the ledgers auto-recovery is re-replicating.
    #[command(subcommand)]
    Bookies(BookiesCommand),
    /// The active brokers and the leader.
    #[command(subcommand)]
    Brokers(BrokersCommand),
    /// This broker's load (pulsar-admin's `broker-stats`).
    #[command(subcommand)]
    BrokerStats(BrokerStatsCommand),
}

#[derive(Debug, Subcommand)]
pub enum BrokerStatsCommand {
    /// The load report of the broker asked (pulsar-admin's `broker-stats load-report`).
    LoadReport,
}

#[derive(Debug, Subcommand)]
pub enum BrokersCommand {
    /// The active brokers of a cluster (pulsar-admin's `brokers list`).
    List { cluster: String },
    /// The leader broker (pulsar-admin's `brokers leader-broker`).
    LeaderBroker,
}

#[derive(Debug, Subcommand)]
pub enum BookiesCommand {
    /// The registered bookies (pulsar-admin's `bookies list-bookies`).
    ListBookies,
    /// Ledgers with a replica on a lost bookie, not yet copied elsewhere.
    ListUnderreplicated,
    /// Decommission a bookie: it turns read-only and its replicas are copied elsewhere.
    Decommission { bookie: String },
    /// Show how far a decommission is (ready to remove when no ledger names the bookie).
    DecommissionStatus { bookie: String },
    /// Stop decommissioning a bookie: it takes writes again.
    CancelDecommission { bookie: String },
}

#[derive(Debug, Args)]
pub struct TenantInfoArgs {
    /// Tenant name.
    tenant: String,
    /// Comma-separated admin roles.
    #[arg(short = 'r', long, value_delimiter = ',')]
    admin_roles: Vec<String>,
    /// Comma-separated clusters the tenant may use.
    #[arg(short = 'c', long, value_delimiter = ',')]
    allowed_clusters: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum TenantsCommand {
    /// List the tenants.
    List,
    /// Show a tenant's configuration.
    Get { tenant: String },
    /// Create a tenant.
    Create(TenantInfoArgs),
    /// Replace a tenant's admin roles and allowed clusters.
    Update(TenantInfoArgs),
    /// Delete a tenant that has no namespaces.
    Delete { tenant: String },
}

#[derive(Debug, Subcommand)]
pub enum NamespacesCommand {
    /// List the namespaces of a tenant.
    List { tenant: String },
    /// Create a namespace (tenant/namespace).
    Create {
        namespace: String,
        /// Number of bundles the namespace is split into.
        #[arg(short = 'b', long)]
        bundles: Option<u32>,
    },
    /// Delete an empty namespace.
    Delete { namespace: String },
    /// Show a namespace's policies.
    Policies { namespace: String },
    /// Show a namespace's bundle boundaries.
    Bundles { namespace: String },
    /// Split a bundle in two (or at the given positions).
    SplitBundle {
        namespace: String,
        /// The bundle's range, e.g. 0x00000000_0x40000000.
        #[arg(short = 'b', long)]
        bundle: String,
        /// Hand the children to other brokers afterwards.
        #[arg(short = 'u', long)]
        unload: bool,
        /// range_equally_divide, topic_count_equally_divide or specified_positions_divide.
        #[arg(
            long = "split-algorithm-name",
            alias = "san",
            default_value = "range_equally_divide"
        )]
        split_algorithm_name: String,
        /// Hash positions for specified_positions_divide, comma-separated.
        #[arg(long, value_delimiter = ',')]
        split_boundaries: Vec<u32>,
    },
    /// Unload a namespace's bundles (or one of them) from the brokers serving them; their
    /// topics move to other brokers (the destination's, if given).
    Unload {
        namespace: String,
        /// One bundle: its range, e.g. 0x00000000_0x40000000.
        #[arg(short = 'b', long)]
        bundle: Option<String>,
        /// The broker to move the bundle to (a `brokers list` id, or pulsar://host:port).
        #[arg(short = 'd', long = "destinationBroker", alias = "destination-broker")]
        destination_broker: Option<String>,
    },
    /// List the topics of a namespace (partitions included).
    Topics { namespace: String },
    /// Set the retention of consumed messages.
    SetRetention {
        namespace: String,
        /// Retention time: -1 (unlimited), or a number with s/m/h/d/w/y (a bare number is
        /// seconds), e.g. 100m, 3h, 2d.
        #[arg(short = 't', long, allow_hyphen_values = true)]
        time: String,
        /// Retention size: -1 (unlimited), or a number with k/m/g/t (a bare number is bytes),
        /// e.g. 10M, 16G.
        #[arg(short = 's', long, allow_hyphen_values = true)]
        size: String,
    },
    /// Show the retention policy.
    GetRetention { namespace: String },
    /// Remove the retention policy (back to the broker's default).
    RemoveRetention { namespace: String },
    /// Enable or disable message deduplication.
    #[command(group(ArgGroup::new("switch").required(true).args(["enable", "disable"])))]
    SetDeduplication {
        namespace: String,
        #[arg(short = 'e', long)]
        enable: bool,
        #[arg(short = 'd', long)]
        disable: bool,
    },
    /// Show whether deduplication is enabled.
    GetDeduplication { namespace: String },
    /// Remove the deduplication setting (back to the broker's default).
    RemoveDeduplication { namespace: String },
    /// Set the schema compatibility strategy (UNDEFINED: the broker's default).
    SetSchemaCompatibilityStrategy {
        namespace: String,
        /// ALWAYS_INCOMPATIBLE, ALWAYS_COMPATIBLE, BACKWARD, FORWARD, FULL,
        /// BACKWARD_TRANSITIVE, FORWARD_TRANSITIVE, FULL_TRANSITIVE or UNDEFINED.
        #[arg(short = 'c', long)]
        compatibility: String,
    },
    /// Show the schema compatibility strategy (UNDEFINED: the broker's default).
    GetSchemaCompatibilityStrategy { namespace: String },
    /// Allow or refuse producers registering new schema versions.
    #[command(group(ArgGroup::new("switch").required(true).args(["enable", "disable"])))]
    SetIsAllowAutoUpdateSchema {
        namespace: String,
        #[arg(short = 'e', long)]
        enable: bool,
        #[arg(short = 'd', long)]
        disable: bool,
    },
    /// Show whether producers may register new schema versions.
    GetIsAllowAutoUpdateSchema { namespace: String },
    /// Set how the namespace's ledgers are striped over bookies.
    SetPersistence {
        namespace: String,
        /// Number of bookies a ledger is striped over (E).
        #[arg(short = 'e', long, visible_alias = "bookkeeper-ensemble")]
        ensemble: u32,
        /// Number of copies of each entry (Qw).
        #[arg(short = 'w', long, visible_alias = "bookkeeper-write-quorum")]
        write_quorum: u32,
        /// Number of acknowledgements an add waits for (Qa).
        #[arg(short = 'a', long, visible_alias = "bookkeeper-ack-quorum")]
        ack_quorum: u32,
        /// Throttling rate of mark-delete operations (0: none).
        #[arg(short = 'r', long, default_value_t = 0.0)]
        ml_mark_delete_max_rate: f64,
    },
    /// Show the persistence policy.
    GetPersistence { namespace: String },
    /// Remove the persistence policy (back to the broker's default).
    RemovePersistence { namespace: String },
    /// Override the broker's topic auto-creation for this namespace.
    #[command(group(ArgGroup::new("switch").required(true).args(["enable", "disable"])))]
    SetAutoTopicCreation {
        namespace: String,
        #[arg(short = 'e', long)]
        enable: bool,
        #[arg(short = 'd', long)]
        disable: bool,
        /// Type of auto-created topics: non-partitioned or partitioned.
        #[arg(short = 't', long = "type", default_value = "non-partitioned")]
        topic_type: String,
        /// Partitions of auto-created partitioned topics.
        #[arg(short = 'n', long)]
        num_partitions: Option<u32>,
    },
    /// Show the auto topic creation override.
    GetAutoTopicCreation { namespace: String },
    /// Remove the auto topic creation override.
    RemoveAutoTopicCreation { namespace: String },
    /// Offload a topic's older ledgers once it keeps more than --size on the bookies, or once
    /// they are older than --time (-1: off).
    SetOffloadThreshold {
        namespace: String,
        /// Bytes kept on the bookies, e.g. 10M, 5G (-1: off).
        #[arg(short = 's', long, default_value = "-1", allow_hyphen_values = true)]
        size: String,
        /// Age of a closed ledger, e.g. 10m, 5h, 3d, 2w (-1: off).
        #[arg(short = 't', long, default_value = "-1", allow_hyphen_values = true)]
        time: String,
    },
    /// Show the offload thresholds.
    GetOffloadThreshold { namespace: String },
    /// Delete the bookies' copy of an offloaded ledger this long after its offload, e.g. 4h.
    SetOffloadDeletionLag {
        namespace: String,
        #[arg(short = 'l', long)]
        lag: String,
    },
    /// Show the offload deletion lag.
    GetOffloadDeletionLag { namespace: String },
    /// Remove the offload deletion lag (back to the broker's).
    ClearOffloadDeletionLag { namespace: String },
    /// Set the offload policies.
    SetOffloadPolicies {
        namespace: String,
        #[command(flatten)]
        policy: OffloadPolicyArgs,
    },
    /// Show the offload policies.
    GetOffloadPolicies { namespace: String },
    /// Remove the offload policies.
    RemoveOffloadPolicies { namespace: String },
}

/// The options of `set-offload-policies` (namespaces and topics alike).
#[derive(Debug, Args)]
pub struct OffloadPolicyArgs {
    /// s3, aws-s3, google-cloud-storage, filesystem, azureblob.
    #[arg(short = 'd', long)]
    driver: String,
    #[arg(short = 'b', long)]
    bucket: Option<String>,
    #[arg(short = 'r', long)]
    region: Option<String>,
    #[arg(short = 'e', long)]
    endpoint: Option<String>,
    /// Upload part size, e.g. 64M.
    #[arg(long = "maxBlockSize", visible_alias = "mbs")]
    max_block_size: Option<String>,
    /// Ranged-read size, e.g. 1M.
    #[arg(long = "readBufferSize", visible_alias = "rbs")]
    read_buffer_size: Option<String>,
    /// Bytes kept on the bookies before offloading (e.g. 10M; -1 off).
    #[arg(
        long = "offloadAfterThreshold",
        visible_alias = "oat",
        allow_hyphen_values = true
    )]
    offload_after_threshold: Option<String>,
    /// Age after which closed ledgers are offloaded (e.g. 1h; -1 off).
    #[arg(
        long = "offloadAfterThresholdInSeconds",
        visible_alias = "oats",
        allow_hyphen_values = true
    )]
    offload_after_threshold_in_seconds: Option<String>,
    /// Deletion lag of the bookies' copy (e.g. 4h).
    #[arg(long = "offloadAfterElapsed", visible_alias = "oae")]
    offload_after_elapsed: Option<String>,
}

#[derive(Debug, Args)]
pub struct SubscriptionArg {
    /// Topic: persistent://tenant/namespace/topic, tenant/namespace/topic or topic.
    topic: String,
    /// Subscription name.
    #[arg(short = 's', long)]
    subscription: String,
}

#[derive(Debug, Subcommand)]
pub enum TopicsCommand {
    /// List the topics of a namespace (partitions included).
    List { namespace: String },
    /// Create a non-partitioned topic.
    Create {
        topic: String,
        /// Properties, key=value, comma-separated.
        #[arg(short = 'm', long, value_delimiter = ',')]
        metadata: Vec<String>,
    },
    /// Delete a topic.
    Delete {
        topic: String,
        /// Delete even with connected producers and consumers.
        #[arg(short = 'f', long)]
        force: bool,
    },
    /// Show a topic's stats.
    Stats { topic: String },
    /// Show the broker serving a topic (pulsar-admin's `topics lookup`).
    Lookup { topic: String },
    /// Show the range of the bundle a topic belongs to.
    BundleRange { topic: String },
    /// Show a partitioned topic's stats, added up over its partitions.
    PartitionedStats {
        topic: String,
        /// Also show each partition's own stats.
        #[arg(long)]
        per_partition: bool,
    },
    /// Show a topic's managed ledger and cursors.
    #[command(visible_alias = "stats-internal")]
    InternalStats { topic: String },
    /// List a topic's subscriptions.
    Subscriptions { topic: String },
    /// Create a durable subscription.
    CreateSubscription {
        #[command(flatten)]
        sub: SubscriptionArg,
        /// Where it starts: latest, earliest or ledgerId:entryId.
        #[arg(short = 'm', long, default_value = "latest")]
        message_id: String,
    },
    /// Delete a subscription.
    Unsubscribe {
        #[command(flatten)]
        sub: SubscriptionArg,
        /// Delete even with connected consumers.
        #[arg(short = 'f', long)]
        force: bool,
    },
    /// Move a subscription's cursor back in time or to a message id.
    #[command(group(ArgGroup::new("target").required(true).args(["time", "message_id"])))]
    ResetCursor {
        #[command(flatten)]
        sub: SubscriptionArg,
        /// How far back from now, e.g. 100m, 3h, 2d (a bare number is seconds).
        #[arg(short = 't', long)]
        time: Option<String>,
        /// A message id, ledgerId:entryId.
        #[arg(short = 'm', long)]
        message_id: Option<String>,
        /// With --message-id: start after that message rather than at it.
        #[arg(short = 'e', long)]
        exclude_reset_position: bool,
    },
    /// Skip messages of a subscription's backlog.
    Skip {
        #[command(flatten)]
        sub: SubscriptionArg,
        /// Number of messages.
        #[arg(short = 'n', long)]
        count: u64,
    },
    /// Skip a subscription's whole backlog.
    ClearBacklog {
        #[command(flatten)]
        sub: SubscriptionArg,
    },
    /// Show the next messages of a subscription without consuming them.
    PeekMessages {
        #[command(flatten)]
        sub: SubscriptionArg,
        /// Number of messages.
        #[arg(short = 'n', long, default_value_t = 1)]
        count: u64,
    },
    /// Create a partitioned topic.
    CreatePartitionedTopic {
        topic: String,
        #[arg(short = 'p', long)]
        partitions: u32,
    },
    /// Offload the topic's older ledgers, keeping at most --size-threshold on the bookies.
    Offload {
        topic: String,
        /// Bytes to keep on the bookies, e.g. 10M, 5G.
        #[arg(short = 's', long)]
        size_threshold: String,
    },
    /// Set the topic's own offload policies (over its namespace's).
    SetOffloadPolicies {
        topic: String,
        #[command(flatten)]
        policy: OffloadPolicyArgs,
    },
    /// Show the topic's own offload policies; with --applied, the settings in force.
    GetOffloadPolicies {
        topic: String,
        #[arg(short = 'a', long)]
        applied: bool,
    },
    /// Remove the topic's own offload policies (back to its namespace's).
    RemoveOffloadPolicies { topic: String },
    /// Show the last offload of a topic.
    OffloadStatus {
        topic: String,
        /// Wait until a running offload ends.
        #[arg(short = 'w', long)]
        wait_complete: bool,
    },
    /// Show a partitioned topic's partition count (0: not partitioned).
    GetPartitionedTopicMetadata { topic: String },
    /// Raise a partitioned topic's partition count.
    UpdatePartitionedTopic {
        topic: String,
        #[arg(short = 'p', long)]
        partitions: u32,
    },
    /// Delete a partitioned topic and its partitions.
    DeletePartitionedTopic {
        topic: String,
        /// Delete even with connected producers and consumers.
        #[arg(short = 'f', long)]
        force: bool,
    },
    /// List the partitioned topics of a namespace.
    ListPartitionedTopics { namespace: String },
}

/// Runs one admin command; errors (including non-2xx answers) become exit code 1.
pub fn run(args: AdminArgs, config: &Config) -> anyhow::Result<u8> {
    let url = args
        .url
        .or_else(|| std::env::var(ADMIN_URL_ENV).ok().filter(|u| !u.is_empty()))
        .unwrap_or_else(|| config.admin.url.clone());
    let client = Client::new(&url)?;
    match args.command {
        AdminCommand::Tenants(c) => tenants(&client, c),
        AdminCommand::Namespaces(c) => namespaces(&client, c),
        AdminCommand::Topics(c) => topics(&client, c),
        AdminCommand::Brokers(c) => match c {
            BrokersCommand::List { cluster } => client
                .get(&format!("brokers/{}", enc(&cluster)))
                .map(|r| r.print()),
            BrokersCommand::LeaderBroker => client.get("brokers/leaderBroker").map(|r| r.print()),
        },
        AdminCommand::BrokerStats(BrokerStatsCommand::LoadReport) => {
            client.get("broker-stats/load-report").map(|r| r.print())
        }
        AdminCommand::Bookies(c) => match c {
            BookiesCommand::ListBookies => client.get("bookies/all").map(|r| r.print()),
            BookiesCommand::ListUnderreplicated => {
                client.get("bookies/underreplicated").map(|r| r.print())
            }
            BookiesCommand::Decommission { bookie } => client
                .put(&format!("bookies/{}/decommission", enc(&bookie)), None)
                .map(|r| r.print()),
            BookiesCommand::DecommissionStatus { bookie } => client
                .get(&format!("bookies/{}/decommission", enc(&bookie)))
                .map(|r| r.print()),
            BookiesCommand::CancelDecommission { bookie } => client
                .delete(&format!("bookies/{}/decommission", enc(&bookie)))
                .map(|r| r.print()),
        },
    }?;
    Ok(EXIT_OK)
}

/// A path segment, percent-encoded.
fn enc(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

fn tenant_path(tenant: &str) -> String {
    format!("tenants/{}", enc(tenant))
}

fn namespace_path(namespace: &str) -> anyhow::Result<String> {
    let ns: NamespaceName = namespace.parse()?;
    Ok(format!("{}/{}", enc(ns.tenant()), enc(ns.namespace())))
}

fn topic_path(topic: &str) -> anyhow::Result<String> {
    let t: TopicName = topic.parse()?;
    Ok(format!(
        "persistent/{}/{}/{}",
        enc(t.namespace().tenant()),
        enc(t.namespace().namespace()),
        enc(t.local_name())
    ))
}

fn subscription_path(s: &SubscriptionArg) -> anyhow::Result<String> {
    Ok(format!(
        "{}/subscription/{}",
        topic_path(&s.topic)?,
        enc(&s.subscription)
    ))
}

fn tenants(c: &Client, cmd: TenantsCommand) -> anyhow::Result<()> {
    let info = |a: &TenantInfoArgs| {
        json!({"adminRoles": a.admin_roles, "allowedClusters": a.allowed_clusters}).to_string()
    };
    match cmd {
        TenantsCommand::List => c.get("tenants")?.print(),
        TenantsCommand::Get { tenant } => c.get(&tenant_path(&tenant))?.print(),
        TenantsCommand::Create(a) => c.put(&tenant_path(&a.tenant), Some(info(&a)))?.print(),
        TenantsCommand::Update(a) => c.post(&tenant_path(&a.tenant), Some(info(&a)))?.print(),
        TenantsCommand::Delete { tenant } => c.delete(&tenant_path(&tenant))?.print(),
    }
    Ok(())
}

fn namespaces(c: &Client, cmd: NamespacesCommand) -> anyhow::Result<()> {
    use NamespacesCommand as N;
    let ns = |n: &str| namespace_path(n).map(|p| format!("namespaces/{p}"));
    match cmd {
        N::List { tenant } => c.get(&format!("namespaces/{}", enc(&tenant)))?,
        N::Create { namespace, bundles } => {
            let body = bundles.map(|b| json!({"bundles": {"numBundles": b}}).to_string());
            c.put(&ns(&namespace)?, body)?
        }
        N::Delete { namespace } => c.delete(&ns(&namespace)?)?,
        N::Policies { namespace } => c.get(&ns(&namespace)?)?,
        N::Bundles { namespace } => c.get(&format!("{}/bundles", ns(&namespace)?))?,
        N::SplitBundle {
            namespace,
            bundle,
            unload,
            split_algorithm_name,
            split_boundaries,
        } => {
            let body = (!split_boundaries.is_empty())
                .then(|| serde_json::to_string(&split_boundaries))
                .transpose()?;
            c.put(
                &format!(
                    "{}/{}/split?unload={unload}&splitAlgorithmName={}",
                    ns(&namespace)?,
                    enc(&bundle),
                    enc(&split_algorithm_name)
                ),
                body,
            )?
        }
        N::Unload {
            namespace,
            bundle,
            destination_broker,
        } => {
            if destination_broker.is_some() && bundle.is_none() {
                bail!("--destinationBroker needs --bundle");
            }
            let path = match &bundle {
                Some(b) => format!("{}/{}/unload", ns(&namespace)?, enc(b)),
                None => format!("{}/unload", ns(&namespace)?),
            };
            let query = destination_broker
                .map(|d| format!("?destinationBroker={}", enc(&d)))
                .unwrap_or_default();
            c.put(&format!("{path}{query}"), None)?
        }
        N::Topics { namespace } => c.get(&format!("{}/topics", ns(&namespace)?))?,
        N::SetRetention {
            namespace,
            time,
            size,
        } => {
            let minutes = match parse_seconds(&time)? {
                -1 => -1,
                secs => secs / 60,
            };
            let mb = match parse_bytes(&size)? {
                -1 => -1,
                bytes => bytes / (1024 * 1024),
            };
            let body = json!({"retentionTimeInMinutes": minutes, "retentionSizeInMB": mb});
            c.post(
                &format!("{}/retention", ns(&namespace)?),
                Some(body.to_string()),
            )?
        }
        N::GetRetention { namespace } => c.get(&format!("{}/retention", ns(&namespace)?))?,
        N::RemoveRetention { namespace } => c.delete(&format!("{}/retention", ns(&namespace)?))?,
        N::SetDeduplication {
            namespace, enable, ..
        } => c.post(
            &format!("{}/deduplication", ns(&namespace)?),
            Some(enable.to_string()),
        )?,
        N::GetDeduplication { namespace } => {
            c.get(&format!("{}/deduplication", ns(&namespace)?))?
        }
        N::RemoveDeduplication { namespace } => {
            c.delete(&format!("{}/deduplication", ns(&namespace)?))?
        }
        N::SetSchemaCompatibilityStrategy {
            namespace,
            compatibility,
        } => c.put(
            &format!("{}/schemaCompatibilityStrategy", ns(&namespace)?),
            Some(json!(compatibility.to_uppercase()).to_string()),
        )?,
        N::GetSchemaCompatibilityStrategy { namespace } => {
            c.get(&format!("{}/schemaCompatibilityStrategy", ns(&namespace)?))?
        }
        N::SetIsAllowAutoUpdateSchema {
            namespace, enable, ..
        } => c.post(
            &format!("{}/isAllowAutoUpdateSchema", ns(&namespace)?),
            Some(enable.to_string()),
        )?,
        N::GetIsAllowAutoUpdateSchema { namespace } => {
            c.get(&format!("{}/isAllowAutoUpdateSchema", ns(&namespace)?))?
        }
        N::SetPersistence {
            namespace,
            ensemble,
            write_quorum,
            ack_quorum,
            ml_mark_delete_max_rate,
        } => {
            let body = json!({
                "bookkeeperEnsemble": ensemble,
                "bookkeeperWriteQuorum": write_quorum,
                "bookkeeperAckQuorum": ack_quorum,
                "managedLedgerMaxMarkDeleteRate": ml_mark_delete_max_rate,
            });
            c.post(
                &format!("{}/persistence", ns(&namespace)?),
                Some(body.to_string()),
            )?
        }
        N::GetPersistence { namespace } => c.get(&format!("{}/persistence", ns(&namespace)?))?,
        N::RemovePersistence { namespace } => {
            c.delete(&format!("{}/persistence", ns(&namespace)?))?
        }
        N::SetAutoTopicCreation {
            namespace,
            enable,
            topic_type,
            num_partitions,
            ..
        } => {
            let mut body = json!({"allowAutoTopicCreation": enable, "topicType": topic_type});
            if let Some(n) = num_partitions {
                body["defaultNumPartitions"] = json!(n);
            }
            c.post(
                &format!("{}/autoTopicCreation", ns(&namespace)?),
                Some(body.to_string()),
            )?
        }
        N::GetAutoTopicCreation { namespace } => {
            c.get(&format!("{}/autoTopicCreation", ns(&namespace)?))?
        }
        N::RemoveAutoTopicCreation { namespace } => {
            c.delete(&format!("{}/autoTopicCreation", ns(&namespace)?))?
        }
        N::SetOffloadThreshold {
            namespace,
            size,
            time,
        } => {
            let path = ns(&namespace)?;
            c.put(
                &format!("{path}/offloadThreshold"),
                Some(parse_bytes(&size)?.to_string()),
            )?;
            c.put(
                &format!("{path}/offloadThresholdInSeconds"),
                Some(parse_seconds(&time)?.to_string()),
            )?
        }
        N::GetOffloadThreshold { namespace } => {
            let path = ns(&namespace)?;
            let bytes = c.get(&format!("{path}/offloadThreshold"))?;
            let secs = c.get(&format!("{path}/offloadThresholdInSeconds"))?;
            println!(
                "offloadThresholdInBytes: {}",
                String::from_utf8_lossy(&bytes.body).trim()
            );
            println!(
                "offloadThresholdInSeconds: {}",
                String::from_utf8_lossy(&secs.body).trim()
            );
            return Ok(());
        }
        N::SetOffloadDeletionLag { namespace, lag } => c.put(
            &format!("{}/offloadDeletionLagMs", ns(&namespace)?),
            Some(parse_seconds(&lag)?.saturating_mul(1000).to_string()),
        )?,
        N::GetOffloadDeletionLag { namespace } => {
            let reply = c.get(&format!("{}/offloadDeletionLagMs", ns(&namespace)?))?;
            match serde_json::from_slice::<i64>(&reply.body) {
                Ok(ms) => println!("{} minute(s)", ms / 60_000),
                Err(_) => println!("Unset for namespace. Defaulting to broker setting."),
            }
            return Ok(());
        }
        N::ClearOffloadDeletionLag { namespace } => {
            c.delete(&format!("{}/offloadDeletionLagMs", ns(&namespace)?))?
        }
        N::SetOffloadPolicies { namespace, policy } => {
            let body = offload_policies_body(policy)?;
            c.post(
                &format!("{}/offloadPolicies", ns(&namespace)?),
                Some(body.to_string()),
            )?
        }
        N::GetOffloadPolicies { namespace } => {
            c.get(&format!("{}/offloadPolicies", ns(&namespace)?))?
        }
        N::RemoveOffloadPolicies { namespace } => {
            c.delete(&format!("{}/removeOffloadPolicies", ns(&namespace)?))?
        }
    }
    .print();
    Ok(())
}

/// Pulsar's `OffloadPolicies` body from the options, with the S3-specific fields set too for
/// S3 drivers, as pulsar-admin sends it.
fn offload_policies_body(p: OffloadPolicyArgs) -> anyhow::Result<Value> {
    let OffloadPolicyArgs {
        driver,
        bucket,
        region,
        endpoint,
        max_block_size,
        read_buffer_size,
        offload_after_threshold,
        offload_after_threshold_in_seconds,
        offload_after_elapsed,
    } = p;
    let s3 = matches!(driver.to_ascii_lowercase().as_str(), "s3" | "aws-s3");
    let mut body = json!({"managedLedgerOffloadDriver": driver});
    let mut both = |generic: &str, specific: &str, v: Value| {
        body[generic] = v.clone();
        if s3 {
            body[format!("s3{specific}")] = v;
        }
    };
    if let Some(b) = bucket {
        both(
            "managedLedgerOffloadBucket",
            "ManagedLedgerOffloadBucket",
            json!(b),
        );
    }
    if let Some(r) = region {
        both(
            "managedLedgerOffloadRegion",
            "ManagedLedgerOffloadRegion",
            json!(r),
        );
    }
    if let Some(e) = endpoint {
        both(
            "managedLedgerOffloadServiceEndpoint",
            "ManagedLedgerOffloadServiceEndpoint",
            json!(e),
        );
    }
    if let Some(m) = max_block_size {
        both(
            "managedLedgerOffloadMaxBlockSizeInBytes",
            "ManagedLedgerOffloadMaxBlockSizeInBytes",
            json!(parse_bytes(&m)?),
        );
    }
    if let Some(r) = read_buffer_size {
        both(
            "managedLedgerOffloadReadBufferSizeInBytes",
            "ManagedLedgerOffloadReadBufferSizeInBytes",
            json!(parse_bytes(&r)?),
        );
    }
    if let Some(t) = offload_after_threshold {
        body["managedLedgerOffloadThresholdInBytes"] = json!(parse_bytes(&t)?);
    }
    if let Some(t) = offload_after_threshold_in_seconds {
        body["managedLedgerOffloadThresholdInSeconds"] = json!(parse_seconds(&t)?);
    }
    if let Some(l) = offload_after_elapsed {
        body["managedLedgerOffloadDeletionLagInMillis"] =
            json!(parse_seconds(&l)?.saturating_mul(1000));
    }
    Ok(body)
}

fn topics(c: &Client, cmd: TopicsCommand) -> anyhow::Result<()> {
    use TopicsCommand as T;
    match cmd {
        T::List { namespace } => c.get(&format!("persistent/{}", namespace_path(&namespace)?))?,
        T::Create { topic, metadata } => {
            let mut props = BTreeMap::new();
            for kv in metadata {
                let (k, v) = kv
                    .split_once('=')
                    .ok_or_else(|| anyhow!("metadata must be key=value, got {kv:?}"))?;
                props.insert(k.to_owned(), v.to_owned());
            }
            let body = (!props.is_empty()).then(|| json!(props).to_string());
            c.put(&topic_path(&topic)?, body)?
        }
        T::Delete { topic, force } => {
            c.delete(&format!("{}?force={force}", topic_path(&topic)?))?
        }
        T::Stats { topic } => c.get(&format!("{}/stats", topic_path(&topic)?))?,
        T::Lookup { topic } => c.get(&format!("/lookup/v2/topic/{}", topic_path(&topic)?))?,
        T::BundleRange { topic } => c.get(&format!("{}/bundle", topic_path(&topic)?))?,
        T::PartitionedStats {
            topic,
            per_partition,
        } => c.get(&format!(
            "{}/partitioned-stats?perPartition={per_partition}",
            topic_path(&topic)?
        ))?,
        T::InternalStats { topic } => c.get(&format!("{}/internalStats", topic_path(&topic)?))?,
        T::Subscriptions { topic } => c.get(&format!("{}/subscriptions", topic_path(&topic)?))?,
        T::CreateSubscription { sub, message_id } => {
            let (ledger, entry) = match message_id.as_str() {
                "latest" => (i64::MAX, i64::MAX),
                "earliest" => (-1, -1),
                id => {
                    let (l, e) = parse_message_id(id)?;
                    (l as i64, e as i64)
                }
            };
            let body = json!({"ledgerId": ledger, "entryId": entry, "partitionIndex": -1});
            c.put(&subscription_path(&sub)?, Some(body.to_string()))?
        }
        T::Unsubscribe { sub, force } => {
            c.delete(&format!("{}?force={force}", subscription_path(&sub)?))?
        }
        T::ResetCursor {
            sub,
            time,
            message_id,
            exclude_reset_position,
        } => {
            let path = subscription_path(&sub)?;
            if let Some(time) = time {
                let back_ms = u64::try_from(parse_seconds(&time)?)
                    .map_err(|_| anyhow!("--time must be positive, got {time:?}"))?
                    .saturating_mul(1000);
                let now_ms = magnetar_metadata::clock::now_ms();
                c.post(
                    &format!("{path}/resetcursor/{}", now_ms.saturating_sub(back_ms)),
                    None,
                )?
            } else {
                let id = message_id.unwrap_or_default();
                let (ledger, entry) = parse_message_id(&id)?;
                let body = json!({
                    "ledgerId": ledger,
                    "entryId": entry,
                    "partitionIndex": -1,
                    "isExcluded": exclude_reset_position,
                    "batchIndex": -1,
                });
                c.post(&format!("{path}/resetcursor"), Some(body.to_string()))?
            }
        }
        T::Skip { sub, count } => {
            c.post(&format!("{}/skip/{count}", subscription_path(&sub)?), None)?
        }
        T::ClearBacklog { sub } => {
            c.post(&format!("{}/skip_all", subscription_path(&sub)?), None)?
        }
        T::PeekMessages { sub, count } => {
            let path = subscription_path(&sub)?;
            for i in 1..=count {
                let reply = c.get(&format!("{path}/position/{i}"))?;
                print_message(i, &reply);
            }
            return Ok(());
        }
        T::CreatePartitionedTopic { topic, partitions } => c.put(
            &format!("{}/partitions", topic_path(&topic)?),
            Some(partitions.to_string()),
        )?,
        T::Offload {
            topic,
            size_threshold,
        } => {
            let keep = parse_bytes(&size_threshold)?;
            let path = topic_path(&topic)?;
            let stats: Value =
                serde_json::from_slice(&c.get(&format!("{path}/internalStats"))?.body)?;
            match offload_target(&stats, keep)? {
                None => println!("Nothing to offload"),
                Some(ledger) => {
                    let body = json!({"ledgerId": ledger, "entryId": 0, "partitionIndex": -1});
                    c.put(&format!("{path}/offload"), Some(body.to_string()))?;
                    println!("Offload triggered for {topic} for messages before {ledger}:0:-1");
                }
            }
            return Ok(());
        }
        T::SetOffloadPolicies { topic, policy } => c.post(
            &format!("{}/offloadPolicies", topic_path(&topic)?),
            Some(offload_policies_body(policy)?.to_string()),
        )?,
        T::GetOffloadPolicies { topic, applied } => c.get(&format!(
            "{}/offloadPolicies{}",
            topic_path(&topic)?,
            if applied { "?applied=true" } else { "" }
        ))?,
        T::RemoveOffloadPolicies { topic } => {
            c.delete(&format!("{}/offloadPolicies", topic_path(&topic)?))?
        }
        T::OffloadStatus {
            topic,
            wait_complete,
        } => {
            let path = format!("{}/offload", topic_path(&topic)?);
            loop {
                let status: Value = serde_json::from_slice(&c.get(&path)?.body)?;
                match status["status"].as_str().unwrap_or_default() {
                    "RUNNING" if wait_complete => {
                        std::thread::sleep(Duration::from_secs(1));
                        continue;
                    }
                    "RUNNING" => println!("Offload is currently running"),
                    "NOT_RUN" => {
                        println!("Offload has not been run for {topic} since broker startup")
                    }
                    "SUCCESS" => println!("Offload was a success"),
                    _ => {
                        println!("Error in offload");
                        bail!(
                            "Error offloading: {}",
                            status["lastError"].as_str().unwrap_or_default()
                        );
                    }
                }
                return Ok(());
            }
        }
        T::GetPartitionedTopicMetadata { topic } => {
            c.get(&format!("{}/partitions", topic_path(&topic)?))?
        }
        T::UpdatePartitionedTopic { topic, partitions } => c.post(
            &format!("{}/partitions", topic_path(&topic)?),
            Some(partitions.to_string()),
        )?,
        T::DeletePartitionedTopic { topic, force } => {
            c.delete(&format!("{}/partitions?force={force}", topic_path(&topic)?))?
        }
        T::ListPartitionedTopics { namespace } => c.get(&format!(
            "persistent/{}/partitioned",
            namespace_path(&namespace)?
        ))?,
    }
    .print();
    Ok(())
}

/// The ledger before which `topics offload -s KEEP` offloads, from internal stats: walking
/// from the newest ledger back, the first ledger that takes the total past `keep` bytes is
/// offloaded with everything older (pulsar-admin's rule); `None` when everything fits.
fn offload_target(stats: &Value, keep: i64) -> anyhow::Result<Option<u64>> {
    let ledgers = stats["ledgers"]
        .as_array()
        .filter(|l| !l.is_empty())
        .ok_or_else(|| anyhow!("Topic doesn't have any data"))?;
    let current_size = stats["currentLedgerSize"].as_i64().unwrap_or(0);
    let mut total = 0i64;
    // Starts at the newest ledger: a threshold the current ledger alone passes offloads
    // everything before it.
    let mut newer = ledgers.last().and_then(|l| l["ledgerId"].as_u64());
    for (i, l) in ledgers.iter().enumerate().rev() {
        let size = if i == ledgers.len() - 1 {
            current_size
        } else {
            l["size"].as_i64().unwrap_or(0)
        };
        total = total.saturating_add(size);
        if total > keep {
            return Ok(newer);
        }
        newer = l["ledgerId"].as_u64();
    }
    Ok(None)
}

#[cfg(test)]
mod offload_target_tests {
    use super::*;

    #[test]
    fn the_offload_target_keeps_at_most_the_threshold_on_the_bookies() {
        // Three ledgers of 1000, 2000 and 3000 bytes (the last one current).
        let stats = json!({
            "currentLedgerSize": 3000,
            "ledgers": [
                {"ledgerId": 0, "size": 1000},
                {"ledgerId": 1, "size": 2000},
                {"ledgerId": 2, "size": 0},
            ],
        });
        assert_eq!(offload_target(&stats, i64::MAX).unwrap(), None);
        assert_eq!(offload_target(&stats, 0).unwrap(), Some(2));
        assert_eq!(offload_target(&stats, 1000).unwrap(), Some(2));
        assert_eq!(offload_target(&stats, 5000).unwrap(), Some(1));
        assert!(offload_target(&json!({"ledgers": []}), 0).is_err());
    }
}

/// `ledgerId:entryId`.
fn parse_message_id(id: &str) -> anyhow::Result<(u64, u64)> {
    id.split_once(':')
        .and_then(|(l, e)| Some((l.trim().parse().ok()?, e.trim().parse().ok()?)))
        .ok_or_else(|| anyhow!("a message id is ledgerId:entryId, got {id:?}"))
}

/// `-1`, or a number with an optional unit s/m/h/d/w/y (seconds without one), in seconds.
fn parse_seconds(s: &str) -> anyhow::Result<i64> {
    let s = s.trim();
    if s == "-1" {
        return Ok(-1);
    }
    let (digits, unit) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&s[..i], c.to_ascii_lowercase()),
        _ => (s, 's'),
    };
    let n: i64 = digits
        .parse()
        .ok()
        .filter(|n| *n >= 0)
        .ok_or_else(|| anyhow!("invalid time {s:?}: use -1 or e.g. 30s, 100m, 3h, 2d, 1w"))?;
    let unit_secs = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86_400,
        'w' => 7 * 86_400,
        'y' => 365 * 86_400,
        _ => bail!("invalid time unit in {s:?}: use s, m, h, d, w or y"),
    };
    n.checked_mul(unit_secs)
        .ok_or_else(|| anyhow!("time {s:?} is too large"))
}

/// `-1`, or a number with an optional unit k/m/g/t (bytes without one), in bytes.
fn parse_bytes(s: &str) -> anyhow::Result<i64> {
    let s = s.trim();
    if s == "-1" {
        return Ok(-1);
    }
    let (digits, unit) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&s[..i], c.to_ascii_lowercase()),
        _ => (s, 'b'),
    };
    let n: i64 = digits
        .parse()
        .ok()
        .filter(|n| *n >= 0)
        .ok_or_else(|| anyhow!("invalid size {s:?}: use -1 or e.g. 500k, 10M, 16G, 1T"))?;
    let shift = match unit {
        'b' => 0,
        'k' => 10,
        'm' => 20,
        'g' => 30,
        't' => 40,
        _ => bail!("invalid size unit in {s:?}: use k, m, g or t"),
    };
    n.checked_mul(1 << shift)
        .ok_or_else(|| anyhow!("size {s:?} is too large"))
}

/// One HTTP answer.
struct Reply {
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    /// Lists one item per line, other JSON pretty, non-JSON as text; nothing for no body.
    fn print(&self) {
        if self.body.iter().all(u8::is_ascii_whitespace) {
            return;
        }
        match serde_json::from_slice::<Value>(&self.body) {
            Ok(Value::Array(items)) if items.iter().all(Value::is_string) => {
                for item in items {
                    println!("{}", item.as_str().unwrap_or_default());
                }
            }
            Ok(v) => println!(
                "{}",
                serde_json::to_string_pretty(&v).unwrap_or_else(|_| v.to_string())
            ),
            Err(_) => println!("{}", String::from_utf8_lossy(&self.body)),
        }
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn print_message(n: u64, m: &Reply) {
    println!("Message {n}");
    println!(
        "Message ID: {}",
        m.header("x-pulsar-message-id").unwrap_or("?")
    );
    if let Some(t) = m.header("x-pulsar-publish-time") {
        println!("Publish time: {t}");
    }
    let props: BTreeMap<&str, &str> = m
        .headers
        .iter()
        .filter_map(|(k, v)| {
            k.get(..17)
                .filter(|p| p.eq_ignore_ascii_case("x-pulsar-property"))
                .and_then(|_| k.get(18..))
                .map(|key| (key, v.as_str()))
        })
        .collect();
    if !props.is_empty() {
        println!("Properties: {}", json!(props));
    }
    match std::str::from_utf8(&m.body) {
        Ok(text) => println!("{text}"),
        Err(_) => {
            let hex: Vec<String> = m.body.iter().map(|b| format!("{b:02x}")).collect();
            println!("{}", hex.join(" "));
        }
    }
}

/// A blocking HTTP client of one admin URL.
struct Client {
    /// `http://host:port`.
    root: String,
    /// `{root}/admin/v2`: where paths not starting with `/` go.
    base: String,
    agent: ureq::Agent,
}

impl Client {
    fn new(url: &str) -> anyhow::Result<Self> {
        let base = url.trim_end_matches('/');
        if base.starts_with("https://") {
            bail!("{base}: https is not supported by this build of magnetar admin; use http://");
        }
        if !base.starts_with("http://") {
            bail!("invalid admin URL {url:?}: expected http://HOST:PORT");
        }
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .into();
        Ok(Client {
            root: base.to_owned(),
            base: format!("{base}/admin/v2"),
            agent,
        })
    }

    fn get(&self, path: &str) -> anyhow::Result<Reply> {
        let url = self.url(path);
        self.finish("GET", &url, self.agent.get(&url).call())
    }

    fn delete(&self, path: &str) -> anyhow::Result<Reply> {
        let url = self.url(path);
        self.finish("DELETE", &url, self.agent.delete(&url).call())
    }

    fn put(&self, path: &str, body: Option<String>) -> anyhow::Result<Reply> {
        let url = self.url(path);
        let req = self.agent.put(&url);
        let res = match body {
            Some(b) => req.content_type("application/json").send(b),
            None => req.send_empty(),
        };
        self.finish("PUT", &url, res)
    }

    fn post(&self, path: &str, body: Option<String>) -> anyhow::Result<Reply> {
        let url = self.url(path);
        let req = self.agent.post(&url);
        let res = match body {
            Some(b) => req.content_type("application/json").send(b),
            None => req.send_empty(),
        };
        self.finish("POST", &url, res)
    }

    /// `/lookup/...` is under the root; anything else under `/admin/v2`.
    fn url(&self, path: &str) -> String {
        if path.starts_with('/') {
            format!("{}{path}", self.root)
        } else {
            format!("{}/{path}", self.base)
        }
    }

    fn finish(
        &self,
        method: &str,
        url: &str,
        res: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> anyhow::Result<Reply> {
        let mut res = res.with_context(|| format!("{method} {url}: cannot reach the admin API"))?;
        let status = res.status();
        let headers = res
            .headers()
            .iter()
            .map(|(n, v)| {
                (
                    n.to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        let body = res
            .body_mut()
            .with_config()
            .limit(64 * 1024 * 1024)
            .read_to_vec()
            .with_context(|| format!("{method} {url}: reading the answer"))?;
        if !status.is_success() {
            let reason = serde_json::from_slice::<Value>(&body)
                .ok()
                .and_then(|v| v.get("reason").and_then(Value::as_str).map(str::to_owned))
                .unwrap_or_else(|| String::from_utf8_lossy(&body).trim().to_owned());
            let code = status.as_u16();
            let text = status.canonical_reason().unwrap_or("");
            if reason.is_empty() {
                bail!("{method} {url}: HTTP {code} {text}");
            }
            bail!("{method} {url}: HTTP {code} {text}: {reason}");
        }
        Ok(Reply { headers, body })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_parse_like_pulsar_admin() {
        assert_eq!(parse_seconds("-1").unwrap(), -1);
        assert_eq!(parse_seconds("90").unwrap(), 90);
        assert_eq!(parse_seconds("100m").unwrap(), 6000);
        assert_eq!(parse_seconds("3H").unwrap(), 10_800);
        assert_eq!(parse_seconds("2d").unwrap(), 172_800);
        assert!(parse_seconds("-5m").is_err());
        assert!(parse_seconds("5x").is_err());
        assert!(parse_seconds("").is_err());
        assert_eq!(parse_bytes("-1").unwrap(), -1);
        assert_eq!(parse_bytes("10M").unwrap(), 10 << 20);
        assert_eq!(parse_bytes("2g").unwrap(), 2 << 30);
        assert_eq!(parse_bytes("512").unwrap(), 512);
        assert!(parse_bytes("1q").is_err());
        assert_eq!(parse_message_id("5:7").unwrap(), (5, 7));
        assert!(parse_message_id("5").is_err());
    }

    #[test]
    fn paths_are_encoded() {
        assert_eq!(enc("a b/c"), "a%20b%2Fc");
        assert_eq!(
            topic_path("persistent://acme/ns/with:colon").unwrap(),
            "persistent/acme/ns/with%3Acolon"
        );
        assert_eq!(topic_path("t").unwrap(), "persistent/public/default/t");
        assert!(topic_path("non-persistent://a/b/c").is_err());
        assert_eq!(namespace_path("acme/ns").unwrap(), "acme/ns");
        assert!(namespace_path("acme").is_err());
    }
}
