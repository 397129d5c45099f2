package kubernetes

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/dustin/go-humanize"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"github.com/ndlb/ndlb/settings"
	"github.com/ndlb/ndlb/setup"
)

// kustomization is the part of kustomize's file this directory uses.
type kustomization struct {
	APIVersion string            `json:"apiVersion"`
	Kind       string            `json:"kind"`
	Namespace  string            `json:"namespace"`
	Labels     []json.RawMessage `json:"labels"`
	Resources  []string          `json:"resources"`
	Images     []struct {
		Name, NewName, NewTag string
	} `json:"images"`
}

// objects reads every manifest the kustomization lists, each decoded
// strictly (an unknown or misspelt field fails) into its API type.
func objects(t *testing.T) (sets []appsv1.StatefulSet, services []corev1.Service, maps []corev1.ConfigMap, pdbs []policyv1.PodDisruptionBudget) {
	t.Helper()
	var k kustomization
	strict(t, "kustomization.yaml", read(t, "kustomization.yaml"), &k)
	files, _ := filepath.Glob("*.yaml")
	for _, f := range files {
		if f != "kustomization.yaml" && !slices.Contains(k.Resources, f) {
			t.Errorf("%s is not in kustomization.yaml", f)
		}
	}
	for _, f := range k.Resources {
		for _, doc := range bytes.Split(read(t, f), []byte("\n---\n")) {
			var meta metav1.TypeMeta
			if err := yaml.Unmarshal(doc, &meta); err != nil {
				t.Fatalf("%s: %v", f, err)
			}
			switch meta.Kind {
			case "StatefulSet":
				var d appsv1.StatefulSet
				strict(t, f, doc, &d)
				sets = append(sets, d)
			case "Service":
				var s corev1.Service
				strict(t, f, doc, &s)
				services = append(services, s)
			case "ConfigMap":
				var c corev1.ConfigMap
				strict(t, f, doc, &c)
				maps = append(maps, c)
			case "PodDisruptionBudget":
				var p policyv1.PodDisruptionBudget
				strict(t, f, doc, &p)
				pdbs = append(pdbs, p)
			default:
				t.Errorf("%s: a %q the test does not know", f, meta.Kind)
			}
		}
	}
	return sets, services, maps, pdbs
}

func read(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func strict(t *testing.T, name string, doc []byte, into any) {
	t.Helper()
	if err := yaml.UnmarshalStrict(doc, into); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
}

// The manifests are what a cluster accepts and what ndlb runs: flags and
// variables that exist, probes on real admin routes, a config that passes
// check-config, the security context of the image (non-root, read-only,
// no capabilities), a spool on a volume of each pod's own that outlives
// the pod, and a memory limit that holds the config's bound.
func TestManifests(t *testing.T) {
	sets, services, maps, pdbs := objects(t)
	if len(sets) != 1 || len(maps) != 1 || len(services) != 2 || len(pdbs) != 1 {
		t.Fatalf("%d stateful sets, %d config maps, %d services, %d PDBs", len(sets), len(maps), len(services), len(pdbs))
	}
	doc := maps[0].Data["ndlb.toml"]
	path := filepath.Join(t.TempDir(), "ndlb.toml")
	if err := os.WriteFile(path, []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
	proc, listeners, err := setup.Load(path, nil)
	if err != nil {
		t.Fatalf("the ConfigMap's ndlb.toml: %v", err)
	}
	spec, err := setup.Spec(proc, listeners, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatalf("the ConfigMap's ndlb.toml: %v", err)
	}
	adminHost, adminPort, _ := net.SplitHostPort(proc.Values.String("admin"))
	if ip := net.ParseIP(adminHost); ip == nil || !ip.IsUnspecified() {
		t.Errorf("admin %q: the probes and Prometheus reach the pod's address, so listen on every address", proc.Values.String("admin"))
	}

	d := sets[0]
	if !slices.ContainsFunc(services, func(s corev1.Service) bool {
		return s.Name == d.Spec.ServiceName && s.Spec.ClusterIP == corev1.ClusterIPNone
	}) {
		t.Errorf("the stateful set's serviceName %q is no headless Service of the manifests", d.Spec.ServiceName)
	}
	pod := d.Spec.Template.Spec
	if len(pod.Containers) != 1 {
		t.Fatalf("%d containers", len(pod.Containers))
	}
	// A Service whose name makes its links NDLB_* sets NDLB_PORT=tcp://…
	// in the pod: links must be off.
	for _, svc := range services {
		if strings.HasPrefix(strings.ToUpper(strings.ReplaceAll(svc.Name, "-", "_")), "NDLB") &&
			(pod.EnableServiceLinks == nil || *pod.EnableServiceLinks) {
			t.Errorf("Service %q would set NDLB_* variables in the pod: set enableServiceLinks: false", svc.Name)
		}
	}
	c := pod.Containers[0]
	for i, a := range c.Args {
		if name, ok := strings.CutPrefix(a, "--"); ok {
			name, _, _ = strings.Cut(name, "=")
			if _, known := settings.Lookup(name); !known {
				t.Errorf("args[%d]: no flag --%s", i, name)
			}
		}
	}
	if i := slices.Index(c.Args, "--config"); i < 0 || c.Args[i+1] != "/etc/ndlb/ndlb.toml" {
		t.Errorf("args %v do not run the ConfigMap's file", c.Args)
	}
	for _, e := range c.Env {
		if name, ok := strings.CutPrefix(e.Name, "NDLB_"); ok {
			if _, known := settings.Lookup(strings.ToLower(strings.ReplaceAll(name, "_", "-"))); !known {
				t.Errorf("env %s: no such setting", e.Name)
			}
		}
	}
	ports := map[string]int32{}
	for _, p := range c.Ports {
		ports[p.Name] = p.ContainerPort
	}
	if strconv.Itoa(int(ports["admin"])) != adminPort {
		t.Errorf("container port admin %d, the config's admin port %s", ports["admin"], adminPort)
	}
	listen := map[int32]bool{}
	for _, l := range spec.Listeners {
		_, p, _ := strings.Cut(l.Addr, ":")
		n, _ := strconv.Atoi(p)
		listen[int32(n)] = true
	}
	if !listen[ports["logs"]] {
		t.Errorf("container port logs %d is no listener's (%v)", ports["logs"], spec.Listeners)
	}
	for what, p := range map[string]*corev1.Probe{"liveness": c.LivenessProbe, "readiness": c.ReadinessProbe} {
		want := map[string]string{"liveness": "/healthz", "readiness": "/readyz"}[what]
		if p == nil || p.HTTPGet == nil || p.HTTPGet.Path != want || p.HTTPGet.Port.String() != "admin" {
			t.Errorf("%s probe %+v: want GET %s on the admin port", what, p, want)
		}
	}
	sc := c.SecurityContext
	if sc == nil || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem || sc.AllowPrivilegeEscalation == nil ||
		*sc.AllowPrivilegeEscalation || sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) {
		t.Errorf("container security context %+v", sc)
	}
	if psc := pod.SecurityContext; psc == nil || psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot || psc.RunAsUser == nil || *psc.RunAsUser != 65532 {
		t.Errorf("pod security context %+v: want non-root 65532, as the image", psc)
	}
	drain := proc.Values.Duration("drain-timeout")
	for _, l := range listeners {
		drain = max(drain, l.Values.Duration("drain-timeout")+l.Values.Duration("deliver-timeout"))
	}
	if c.Lifecycle != nil && c.Lifecycle.PreStop != nil && c.Lifecycle.PreStop.Sleep != nil {
		drain += time.Duration(c.Lifecycle.PreStop.Sleep.Seconds) * time.Second
	}
	drain += 5 * time.Second // OpenTelemetry's flush at exit, when it is on
	if g := pod.TerminationGracePeriodSeconds; g == nil || float64(*g) <= drain.Seconds() {
		t.Errorf("terminationGracePeriodSeconds %v does not cover the drain and delivery (%s)", g, drain)
	}
	// A spool directory is on a writable volume (the root file system is
	// read-only) that holds the spool's bound.
	spools := 0
	for _, l := range listeners {
		dir := l.Values.String("spool-dir")
		if dir == "" {
			continue
		}
		spools++
		maxBytes, err := humanize.ParseBytes(l.Values.String("spool-max-bytes"))
		if err != nil {
			t.Fatal(err)
		}
		var mount *corev1.VolumeMount
		for i, m := range c.VolumeMounts {
			if dir == m.MountPath || strings.HasPrefix(dir, strings.TrimSuffix(m.MountPath, "/")+"/") {
				mount = &c.VolumeMounts[i]
			}
		}
		if mount == nil || mount.ReadOnly {
			t.Errorf("spool-dir %s is on no writable volume (mounts %+v)", dir, c.VolumeMounts)
			continue
		}
		// Not an emptyDir, which goes with the pod (and the lines in it);
		// a claim of the pod's own (one spool directory has one owner).
		if slices.ContainsFunc(pod.Volumes, func(v corev1.Volume) bool { return v.Name == mount.Name }) {
			t.Errorf("spool-dir %s is on the pod's volume %s, which goes with the pod: want a volumeClaimTemplate", dir, mount.Name)
			continue
		}
		i := slices.IndexFunc(d.Spec.VolumeClaimTemplates, func(v corev1.PersistentVolumeClaim) bool { return v.Name == mount.Name })
		if i < 0 {
			t.Errorf("volume %s is not in the pod", mount.Name)
			continue
		}
		claim := d.Spec.VolumeClaimTemplates[i].Spec
		if size := claim.Resources.Requests.Storage(); size.Value() < int64(maxBytes)*11/10 {
			t.Errorf("the spool's claim holds %v, under spool-max-bytes %d and room for files on their way out", size, maxBytes)
		}
		if !slices.Equal(claim.AccessModes, []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce}) {
			t.Errorf("the spool's claim is %v: one pod's own", claim.AccessModes)
		}
		if psc := pod.SecurityContext; psc == nil || psc.FSGroup == nil || *psc.FSGroup != 65532 {
			t.Errorf("pod security context %+v: a claim's volume is writable by 65532 only with fsGroup 65532", psc)
		}
	}
	if spools == 0 {
		t.Error("the ConfigMap's listener has no spool")
	}
	if c.Resources.Requests.Memory().IsZero() || c.Resources.Limits.Memory().IsZero() || c.Resources.Requests.Cpu().IsZero() {
		t.Errorf("resources %+v", c.Resources)
	}
	// The README's bound on memory, for the ConfigMap's settings, and a
	// TLS client's worst per connection, under the limit and GOMEMLIMIT.
	bound := uint64(40 << 20)
	for _, l := range listeners {
		queue, err1 := humanize.ParseBytes(l.Values.String("buffer-bytes"))
		clients, err2 := humanize.ParseBytes(l.Values.String("client-buffer-bytes"))
		conns := l.Values.Int("max-conns")
		if err1 != nil || err2 != nil || conns <= 0 {
			t.Fatalf("listener: buffer-bytes %v, client-buffer-bytes %v, max-conns %d: the limit needs them set", err1, err2, conns)
		}
		bound += 2*(queue+clients) + uint64(conns)*16<<10
	}
	var memLimit uint64
	for _, e := range c.Env {
		if e.Name == "GOMEMLIMIT" {
			memLimit, _ = humanize.ParseBytes(e.Value)
		}
	}
	if limit := uint64(c.Resources.Limits.Memory().Value()); memLimit == 0 || memLimit >= limit || bound > memLimit {
		t.Errorf("memory: the config's bound %s, GOMEMLIMIT %s, limit %s: want bound < GOMEMLIMIT < limit",
			humanize.IBytes(bound), humanize.IBytes(memLimit), humanize.IBytes(limit))
	}
	if p := c.StartupProbe; p == nil || p.HTTPGet == nil || p.HTTPGet.Path != "/healthz" ||
		time.Duration(p.PeriodSeconds*p.FailureThreshold)*time.Second < 2*time.Minute {
		t.Errorf("startup probe %+v: opening a large spool may take minutes before the admin API answers", p)
	}
	var example corev1.Service
	strict(t, "examples/receivers-headless.yaml", read(t, "examples/receivers-headless.yaml"), &example)
	if example.Spec.ClusterIP != "None" {
		t.Errorf("the receivers' example is not headless: %q", example.Spec.ClusterIP)
	}
	if c.Lifecycle == nil || c.Lifecycle.PreStop == nil || c.Lifecycle.PreStop.Sleep == nil {
		t.Error("no preStop sleep: new connections would still come while the drain begins")
	}
	for _, s := range services {
		if s.Spec.Selector["app.kubernetes.io/name"] != d.Spec.Selector.MatchLabels["app.kubernetes.io/name"] {
			t.Errorf("service %s selects %v", s.Name, s.Spec.Selector)
		}
		for _, p := range s.Spec.Ports {
			if _, ok := ports[p.TargetPort.String()]; !ok {
				t.Errorf("service %s targets port %s, which the container does not name", s.Name, p.TargetPort.String())
			}
		}
	}
	if pdbs[0].Spec.Selector.MatchLabels["app.kubernetes.io/name"] != "ndlb" {
		t.Errorf("PDB selects %v", pdbs[0].Spec.Selector)
	}
	if !slices.ContainsFunc(pod.Volumes, func(v corev1.Volume) bool { return v.ConfigMap != nil && v.ConfigMap.Name == maps[0].Name }) {
		t.Errorf("the pod mounts no config map %q", maps[0].Name)
	}
}
