//! Serde types that mirror the Kubernetes `v1 Pod` YAML, field for field.
//!
//! Hand-written rather than `k8s-openapi` (see ARCHITECTURE.md): the subset a
//! node runs, with the fields that are valid Kubernetes but unsupported or
//! cluster-only declared as raw values so that resolution can name them in an
//! error or a note. Anything not declared here is reported as an unknown field
//! by the loader. Nothing here is trusted: `resolve` validates every field.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer};
use serde_yaml::Value;

/// A scalar that Kubernetes accepts as a string or a number (`cpu: 0.5`,
/// `cpu: "500m"`, `memory: 1e3`), kept as its text.
#[derive(Debug, Clone, PartialEq)]
pub struct Scalar(pub String);

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            S(String),
            I(i64),
            U(u64),
            F(f64),
        }
        Ok(Scalar(
            match Raw::deserialize(d)
                .map_err(|_| serde::de::Error::custom("expected a string or a number"))?
            {
                Raw::S(s) => s,
                Raw::I(i) => i.to_string(),
                Raw::U(u) => u.to_string(),
                Raw::F(f) => f.to_string(),
            },
        ))
    }
}

/// An int-or-string (`port: 8080` or `port: http`).
#[derive(Debug, Clone, PartialEq)]
pub enum IntOrString {
    Int(i64),
    Str(String),
}

impl<'de> Deserialize<'de> for IntOrString {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            I(i64),
            S(String),
        }
        Ok(
            match Raw::deserialize(d)
                .map_err(|_| serde::de::Error::custom("expected an integer or a string"))?
            {
                Raw::I(i) => IntOrString::Int(i),
                Raw::S(s) => IntOrString::Str(s),
            },
        )
    }
}

/// One YAML document: a Pod, a List of Pods, or something else (rejected).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Document {
    pub api_version: Option<String>,
    pub kind: Option<String>,
    pub metadata: Option<ObjectMeta>,
    pub spec: Option<PodSpec>,
    pub status: Option<Value>,
    /// `kind: List`: the items, each checked as a Pod.
    pub items: Option<Vec<Value>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta {
    pub name: Option<String>,
    pub generate_name: Option<String>,
    pub namespace: Option<String>,
    pub uid: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    // Set by a cluster, meaningless in a file: ignored with a note.
    pub resource_version: Option<Value>,
    pub generation: Option<Value>,
    pub creation_timestamp: Option<Value>,
    pub deletion_timestamp: Option<Value>,
    pub deletion_grace_period_seconds: Option<Value>,
    pub self_link: Option<Value>,
    pub managed_fields: Option<Value>,
    pub owner_references: Option<Value>,
    pub finalizers: Option<Value>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodSpec {
    #[serde(default)]
    pub containers: Vec<Container>,
    #[serde(default)]
    pub init_containers: Vec<Container>,
    #[serde(default)]
    pub volumes: Vec<Volume>,
    pub restart_policy: Option<String>,
    pub termination_grace_period_seconds: Option<i64>,
    pub active_deadline_seconds: Option<i64>,
    pub hostname: Option<String>,
    pub subdomain: Option<String>,
    pub host_network: Option<bool>,
    #[serde(rename = "hostIPC")]
    pub host_ipc: Option<bool>,
    #[serde(rename = "hostPID")]
    pub host_pid: Option<bool>,
    pub share_process_namespace: Option<bool>,
    pub security_context: Option<PodSecurityContext>,
    pub dns_policy: Option<String>,
    pub dns_config: Option<PodDnsConfig>,
    #[serde(default)]
    pub host_aliases: Vec<HostAlias>,
    pub enable_service_links: Option<bool>,
    pub automount_service_account_token: Option<bool>,
    // Cluster-only: accepted, ignored with a note.
    pub node_selector: Option<Value>,
    pub node_name: Option<Value>,
    pub affinity: Option<Value>,
    pub tolerations: Option<Value>,
    pub service_account_name: Option<Value>,
    pub service_account: Option<Value>,
    pub priority_class_name: Option<Value>,
    pub priority: Option<Value>,
    pub preemption_policy: Option<Value>,
    pub scheduler_name: Option<Value>,
    pub topology_spread_constraints: Option<Value>,
    pub image_pull_secrets: Option<Value>,
    pub readiness_gates: Option<Value>,
    pub scheduling_gates: Option<Value>,
    pub runtime_class_name: Option<Value>,
    pub overhead: Option<Value>,
    pub os: Option<Value>,
    #[serde(rename = "setHostnameAsFQDN")]
    pub set_hostname_as_fqdn: Option<Value>,
    // Valid Kubernetes that changes what runs, unsupported here: an error.
    pub ephemeral_containers: Option<Value>,
    pub host_users: Option<bool>,
    pub resource_claims: Option<Value>,
    pub resources: Option<Value>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Container {
    pub name: Option<String>,
    pub image: Option<String>,
    pub image_pull_policy: Option<String>,
    pub command: Option<Vec<String>>,
    pub args: Option<Vec<String>>,
    pub working_dir: Option<String>,
    #[serde(default)]
    pub env: Vec<EnvVar>,
    #[serde(default)]
    pub ports: Vec<ContainerPort>,
    #[serde(default)]
    pub volume_mounts: Vec<VolumeMount>,
    pub resources: Option<ResourceRequirements>,
    pub security_context: Option<SecurityContext>,
    pub liveness_probe: Option<Probe>,
    pub readiness_probe: Option<Probe>,
    pub startup_probe: Option<Probe>,
    pub restart_policy: Option<String>,
    pub stdin: Option<bool>,
    pub stdin_once: Option<bool>,
    pub tty: Option<bool>,
    pub termination_message_path: Option<String>,
    pub termination_message_policy: Option<String>,
    // Valid Kubernetes that changes what runs, unsupported here: an error.
    pub lifecycle: Option<Lifecycle>,
    pub env_from: Option<Value>,
    pub volume_devices: Option<Value>,
    pub resize_policy: Option<Value>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EnvVar {
    pub name: Option<String>,
    pub value: Option<String>,
    pub value_from: Option<EnvVarSource>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EnvVarSource {
    pub field_ref: Option<FieldRef>,
    pub resource_field_ref: Option<ResourceFieldRef>,
    pub config_map_key_ref: Option<Value>,
    pub secret_key_ref: Option<Value>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FieldRef {
    pub field_path: Option<String>,
    pub api_version: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResourceFieldRef {
    pub resource: Option<String>,
    pub container_name: Option<String>,
    pub divisor: Option<Scalar>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerPort {
    pub name: Option<String>,
    pub container_port: Option<i64>,
    pub host_port: Option<i64>,
    pub protocol: Option<String>,
    #[serde(rename = "hostIP")]
    pub host_ip: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeMount {
    pub name: Option<String>,
    pub mount_path: Option<String>,
    pub sub_path: Option<String>,
    pub read_only: Option<bool>,
    pub sub_path_expr: Option<Value>,
    pub mount_propagation: Option<String>,
    pub recursive_read_only: Option<Value>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct ResourceRequirements {
    #[serde(default)]
    pub limits: BTreeMap<String, Scalar>,
    #[serde(default)]
    pub requests: BTreeMap<String, Scalar>,
    pub claims: Option<Value>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Capabilities {
    #[serde(default)]
    pub add: Vec<String>,
    #[serde(default)]
    pub drop: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SeccompProfile {
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub localhost_profile: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SecurityContext {
    pub run_as_user: Option<i64>,
    pub run_as_group: Option<i64>,
    pub run_as_non_root: Option<bool>,
    pub privileged: Option<bool>,
    pub allow_privilege_escalation: Option<bool>,
    pub read_only_root_filesystem: Option<bool>,
    pub capabilities: Option<Capabilities>,
    pub seccomp_profile: Option<SeccompProfile>,
    pub proc_mount: Option<String>,
    pub se_linux_options: Option<Value>,
    pub app_armor_profile: Option<Value>,
    pub windows_options: Option<Value>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Sysctl {
    pub name: Option<String>,
    pub value: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodSecurityContext {
    pub run_as_user: Option<i64>,
    pub run_as_group: Option<i64>,
    pub run_as_non_root: Option<bool>,
    pub fs_group: Option<i64>,
    #[serde(default)]
    pub supplemental_groups: Vec<i64>,
    pub seccomp_profile: Option<SeccompProfile>,
    #[serde(default)]
    pub sysctls: Vec<Sysctl>,
    pub fs_group_change_policy: Option<String>,
    pub se_linux_options: Option<Value>,
    pub app_armor_profile: Option<Value>,
    pub windows_options: Option<Value>,
    pub supplemental_groups_policy: Option<Value>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodDnsConfig {
    #[serde(default)]
    pub nameservers: Vec<String>,
    #[serde(default)]
    pub searches: Vec<String>,
    #[serde(default)]
    pub options: Vec<DnsOption>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct DnsOption {
    pub name: Option<String>,
    pub value: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HostAlias {
    pub ip: Option<String>,
    #[serde(default)]
    pub hostnames: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Volume {
    pub name: Option<String>,
    pub empty_dir: Option<EmptyDirVolume>,
    pub host_path: Option<HostPathVolume>,
    // Every other volume source Kubernetes has: valid there, unsupported on a
    // node without an API server or storage drivers.
    pub persistent_volume_claim: Option<Value>,
    pub config_map: Option<Value>,
    pub secret: Option<Value>,
    pub projected: Option<ProjectedVolume>,
    #[serde(rename = "downwardAPI")]
    pub downward_api: Option<DownwardApiVolume>,
    pub nfs: Option<Value>,
    pub csi: Option<Value>,
    pub ephemeral: Option<Value>,
    pub image: Option<Value>,
    pub iscsi: Option<Value>,
    pub git_repo: Option<Value>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DownwardApiVolume {
    #[serde(default)]
    pub items: Vec<DownwardApiFile>,
    /// A scalar: YAML 1.1 readers (the API server's) take `0644` as octal.
    pub default_mode: Option<Scalar>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DownwardApiFile {
    pub path: Option<String>,
    pub field_ref: Option<FieldRef>,
    pub resource_field_ref: Option<ResourceFieldRef>,
    pub mode: Option<Scalar>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProjectedVolume {
    #[serde(default)]
    pub sources: Vec<VolumeProjection>,
    pub default_mode: Option<Scalar>,
}

/// One source of a projected volume. Only `downwardAPI` is runnable here:
/// the others need objects of an API server.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeProjection {
    #[serde(rename = "downwardAPI")]
    pub downward_api: Option<DownwardApiProjection>,
    pub config_map: Option<Value>,
    pub secret: Option<Value>,
    pub service_account_token: Option<Value>,
    pub cluster_trust_bundle: Option<Value>,
    pub pod_certificate: Option<Value>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct DownwardApiProjection {
    #[serde(default)]
    pub items: Vec<DownwardApiFile>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EmptyDirVolume {
    pub medium: Option<String>,
    pub size_limit: Option<Scalar>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HostPathVolume {
    pub path: Option<String>,
    #[serde(rename = "type")]
    pub kind: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Probe {
    pub exec: Option<ExecAction>,
    pub http_get: Option<HttpGetAction>,
    pub tcp_socket: Option<TcpSocketAction>,
    pub grpc: Option<GrpcAction>,
    pub initial_delay_seconds: Option<i64>,
    pub period_seconds: Option<i64>,
    pub timeout_seconds: Option<i64>,
    pub success_threshold: Option<i64>,
    pub failure_threshold: Option<i64>,
    pub termination_grace_period_seconds: Option<i64>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct ExecAction {
    #[serde(default)]
    pub command: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpGetAction {
    pub path: Option<String>,
    pub port: Option<IntOrString>,
    pub host: Option<String>,
    pub scheme: Option<String>,
    #[serde(default)]
    pub http_headers: Vec<HttpHeader>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct HttpHeader {
    pub name: Option<String>,
    pub value: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct TcpSocketAction {
    pub port: Option<IntOrString>,
    pub host: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Lifecycle {
    pub post_start: Option<LifecycleHandler>,
    pub pre_stop: Option<LifecycleHandler>,
    pub stop_signal: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LifecycleHandler {
    pub exec: Option<ExecAction>,
    pub http_get: Option<HttpGetAction>,
    /// Accepted by the API server for old manifests; the kubelet fails it.
    pub tcp_socket: Option<TcpSocketAction>,
    pub sleep: Option<SleepAction>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct SleepAction {
    pub seconds: Option<i64>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct GrpcAction {
    pub port: Option<i64>,
    pub service: Option<String>,
}
