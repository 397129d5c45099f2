// Package kubernetes holds ndlb's Kubernetes manifests and the test that
// checks them without a cluster: every manifest decodes strictly into the
// k8s.io/api types, every flag and NDLB_* variable it uses exists, the
// probes ask real admin routes on the admin port, and the ConfigMap's
// ndlb.toml passes the checks of `ndlb check-config`.
package kubernetes
