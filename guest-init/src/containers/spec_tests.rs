use dstack_compose::Compose;
use serde_json::Value;

use super::*;
use crate::containers::hardening::{self, DEFAULT_CAPABILITIES};

const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\nwww:x:33:33:www:/var/www:/bin/false\napp:x:1000:1000::/home/app:/bin/sh\n";
const GROUP: &str = "root:x:0:\nwww:x:33:\ndocker:x:999:app,www\napp:x:1000:\n";

fn image_config(json: Value) -> ImageConfig {
    serde_json::from_value(json).unwrap()
}

fn service(yaml: &str) -> Service {
    Compose::parse(yaml).unwrap().services["web"].clone()
}

/// A spec input with nothing but `service`: no image, passwd, binds or devices.
fn bare_input(service: &Service) -> SpecInput<'_> {
    SpecInput {
        name: "web",
        service,
        image: None,
        rootfs: Path::new("/r"),
        passwd: None,
        group: None,
        binds: &[],
        devices: &[],
        nofile: 1024,
        mapped_devices: &[],
        netns: None,
    }
}

fn spec_json(service: &Service, image: Option<&ImageConfig>) -> Value {
    let binds = [BindMount {
        source: "/run/dstack/containers/web/hosts".into(),
        destination: "/etc/hosts".into(),
        read_only: true,
    }];
    let spec = build_spec(&SpecInput {
        name: "web",
        service,
        image,
        rootfs: Path::new("/run/dstack/containers/web/rootfs"),
        passwd: Some(PASSWD),
        group: Some(GROUP),
        binds: &binds,
        devices: &[],
        nofile: 1024,
        mapped_devices: &[],
        netns: None,
    })
    .unwrap();
    serde_json::to_value(spec).unwrap()
}

#[test]
fn image_config_alone_gives_the_process() {
    let image = image_config(json!({
        "Entrypoint": ["/docker-entrypoint.sh"],
        "Cmd": ["nginx", "-g", "daemon off;"],
        "Env": ["PATH=/usr/bin:/bin", "NGINX_VERSION=1.27"],
        "WorkingDir": "/srv",
        "User": "www"
    }));
    let spec = spec_json(
        &service("services:\n  web:\n    image: nginx\n"),
        Some(&image),
    );
    let process = &spec["process"];
    assert_eq!(
        process["args"],
        json!(["/docker-entrypoint.sh", "nginx", "-g", "daemon off;"])
    );
    assert_eq!(
        process["env"],
        json!([
            "PATH=/usr/bin:/bin",
            "NGINX_VERSION=1.27",
            "HOSTNAME=web",
            "HOME=/var/www"
        ])
    );
    assert_eq!(process["cwd"], "/srv");
    assert_eq!(process["user"]["uid"], 33);
    assert_eq!(process["user"]["gid"], 33);
    assert_eq!(process["user"]["additionalGids"], json!([999]));
    assert_eq!(process["noNewPrivileges"], true);
    assert_eq!(
        process["capabilities"]["bounding"]
            .as_array()
            .unwrap()
            .len(),
        DEFAULT_CAPABILITIES.len()
    );
    assert_eq!(spec["hostname"], "web");
    assert_eq!(spec["root"]["path"], "/run/dstack/containers/web/rootfs");
    assert_eq!(spec["linux"]["cgroupsPath"], "/dstack/web");
    let namespaces: Vec<&str> = spec["linux"]["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|ns| ns["type"].as_str().unwrap())
        .collect();
    assert_eq!(namespaces, ["pid", "ipc", "uts", "mount", "cgroup"]);
    let hosts = spec["mounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["destination"] == "/etc/hosts")
        .unwrap();
    assert_eq!(hosts["options"], json!(["rbind", "rprivate", "ro"]));
}

#[test]
fn compose_overrides_the_image() {
    let image = image_config(json!({
        "Entrypoint": ["/entry"],
        "Cmd": ["serve"],
        "Env": ["A=image", "B=image"],
        "WorkingDir": "/srv",
        "User": "www"
    }));
    let web = service(
        "services:\n  web:\n    image: x\n    command: [\"run\", \"--fast\"]\n    environment:\n      B: compose\n      C: new\n    working_dir: /app\n    user: \"1000:999\"\n",
    );
    let spec = spec_json(&web, Some(&image));
    let process = &spec["process"];
    assert_eq!(process["args"], json!(["/entry", "run", "--fast"]));
    assert_eq!(
        process["env"],
        json!([
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "A=image",
            "B=compose",
            "C=new",
            "HOSTNAME=web",
            "HOME=/home/app"
        ])
    );
    assert_eq!(process["cwd"], "/app");
    assert_eq!(process["user"]["uid"], 1000);
    assert_eq!(process["user"]["gid"], 999);

    // An entrypoint override drops the image's Cmd, as docker does.
    let web = service("services:\n  web:\n    image: x\n    entrypoint: /bin/sh -c true\n");
    let spec = spec_json(&web, Some(&image));
    assert_eq!(spec["process"]["args"], json!(["/bin/sh", "-c", "true"]));
}

#[test]
fn refuses_a_service_with_nothing_to_run() {
    let web = service("services:\n  web:\n    image: x\n");
    let err = build_spec(&bare_input(&web)).unwrap_err();
    assert!(err.to_string().contains("no command"), "{err}");
}

#[test]
fn resolves_users_like_docker() {
    let r = |spec| resolve_user(spec, Some(PASSWD), Some(GROUP));
    let app = r("app").unwrap();
    assert_eq!(
        (app.uid, app.gid, app.additional_gids),
        (1000, 1000, vec![999])
    );
    assert_eq!(app.home.as_deref(), Some("/home/app"));
    assert_eq!(r("www:docker").unwrap().gid, 999);
    assert_eq!(r("33").unwrap().gid, 33);
    // A number that is not in /etc/passwd is fine, with group 0.
    let unknown = r("4242").unwrap();
    assert_eq!((unknown.uid, unknown.gid, unknown.home), (4242, 0, None));
    assert_eq!(r("4242:7").unwrap().gid, 7);
    assert!(r("nobody").unwrap_err().contains("nobody"));
    assert!(r("app:nogroup").unwrap_err().contains("nogroup"));
    assert!(resolve_user("app", None, None).is_err());
}

#[test]
fn hosts_list_the_plan_then_extra_hosts() {
    let compose = Compose::parse(
        "services:\n  web:\n    image: x\n    extra_hosts: [\"db.internal:10.1.2.3\"]\n",
    )
    .unwrap();
    let lines = [(
        std::net::Ipv4Addr::new(10, 89, 1, 2),
        vec!["web".to_string(), "www".to_string()],
    )];
    assert_eq!(
        hosts_file(&lines, &compose.services["web"]),
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n10.89.1.2\tweb www\n10.1.2.3\tdb.internal\n"
    );
}

#[test]
fn a_planned_network_namespace_is_joined_by_path() {
    let web = service("services:\n  web:\n    image: x\n    command: [serve]\n");
    let spec = build_spec(&bare_input(&web)).unwrap();
    let kinds = |spec: &oci_spec::runtime::Spec| -> Vec<String> {
        let value = serde_json::to_value(spec).unwrap();
        value["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|ns| {
                format!(
                    "{}{}",
                    ns["type"].as_str().unwrap(),
                    ns.get("path")
                        .and_then(|p| p.as_str())
                        .map(|p| format!("@{p}"))
                        .unwrap_or_default()
                )
            })
            .collect()
    };
    assert!(!kinds(&spec).iter().any(|k| k.starts_with("network")));
    let path = Path::new("/run/dstack/netns/web");
    let spec = build_spec(&SpecInput {
        netns: Some(path),
        ..bare_input(&web)
    })
    .unwrap();
    assert!(kinds(&spec).contains(&"network@/run/dstack/netns/web".to_string()));
}

#[test]
fn resolv_conf_takes_the_service_dns_keys_over_the_guest_servers() {
    let guest = ["10.0.2.3".to_string(), "1.1.1.1".to_string()];
    assert_eq!(
        resolv_conf(&guest, &service("services:\n  web:\n    image: x\n")),
        "nameserver 10.0.2.3\nnameserver 1.1.1.1\n"
    );
    assert_eq!(
        resolv_conf(
            &guest,
            &service(
                "services:\n  web:\n    image: x\n    dns: 9.9.9.9\n    dns_search: [corp.example]\n    dns_opt: [ndots:2]\n"
            )
        ),
        "nameserver 9.9.9.9\nsearch corp.example\noptions ndots:2\n"
    );
}

#[test]
fn limits_and_process_keys_reach_the_runtime_spec() {
    let web = service(
        "services:\n  web:\n    image: x\n    command: [a]\n    read_only: true\n    shm_size: 128m\n    tmpfs: [\"/cache:size=1m,mode=0700\"]\n    ulimits: {nofile: {soft: 100, hard: 200}, nproc: 64}\n    sysctls: {kernel.shm_rmid_forced: 1}\n    hostname: box\n    domainname: example.org\n    group_add: [docker, \"4321\"]\n    oom_score_adj: 500\n    pid: host\n    cpuset: 0-1\n    deploy:\n      resources:\n        limits: {memory: 64m, cpus: '0.5', pids: 40}\n        reservations: {memory: 32m}\n",
    );
    let spec = spec_json(&web, None);
    assert_eq!(spec["root"]["readonly"], json!(true));
    assert_eq!(spec["hostname"], json!("box"));
    assert_eq!(spec["domainname"], json!("example.org"));
    let process = &spec["process"];
    assert!(
        process["env"]
            .as_array()
            .unwrap()
            .contains(&json!("HOSTNAME=box"))
    );
    assert_eq!(process["oomScoreAdj"], json!(500));
    assert_eq!(process["user"]["additionalGids"], json!([999, 4321]));
    let rlimits = process["rlimits"].as_array().unwrap();
    assert!(rlimits.contains(&json!({"type": "RLIMIT_NOFILE", "soft": 100, "hard": 200})));
    assert!(rlimits.contains(&json!({"type": "RLIMIT_NPROC", "soft": 64, "hard": 64})));
    assert_eq!(
        rlimits.len(),
        2,
        "the guest's nofile default is replaced: {rlimits:?}"
    );
    let linux = &spec["linux"];
    assert_eq!(linux["sysctl"], json!({"kernel.shm_rmid_forced": "1"}));
    let namespaces: Vec<&str> = linux["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        namespaces,
        ["ipc", "uts", "mount", "cgroup"],
        "pid: host shares the guest's"
    );
    let resources = &linux["resources"];
    assert_eq!(resources["memory"]["limit"], json!(64 << 20));
    assert_eq!(resources["memory"]["reservation"], json!(32 << 20));
    assert_eq!(resources["cpu"]["quota"], json!(50_000));
    assert_eq!(resources["cpu"]["period"], json!(100_000));
    assert_eq!(resources["cpu"]["cpus"], json!("0-1"));
    assert_eq!(resources["pids"]["limit"], json!(40));
    let mounts = spec["mounts"].as_array().unwrap();
    let mount = |dest: &str| mounts.iter().find(|m| m["destination"] == dest).unwrap();
    assert_eq!(
        mount("/cache")["options"],
        json!(["nosuid", "nodev", "mode=700", "size=1048576"])
    );
    assert!(
        mount("/dev/shm")["options"]
            .as_array()
            .unwrap()
            .contains(&json!("size=134217728"))
    );
    // An unknown group name is refused, naming it.
    let bad =
        service("services:\n  web:\n    image: x\n    command: [a]\n    group_add: [nogroup]\n");
    let err = build_spec(&SpecInput {
        passwd: Some(PASSWD),
        group: Some(GROUP),
        ..bare_input(&bad)
    })
    .unwrap_err();
    assert!(err.to_string().contains("nogroup"), "{err}");
}

#[test]
fn a_devices_entry_makes_the_node_at_its_target_and_allows_it() {
    let web = service("services:\n  web:\n    image: x\n    command: [a]\n");
    let mapped = [MappedDevice {
        node: GuestDevice {
            path: "/dev/zero".into(),
            kind: 'c',
            major: 1,
            minor: 5,
            mode: 0o666,
            uid: 0,
            gid: 0,
        },
        target: "/dev/myzero".into(),
        permissions: "r".into(),
    }];
    let spec = build_spec(&SpecInput {
        mapped_devices: &mapped,
        ..bare_input(&web)
    })
    .unwrap();
    let spec = serde_json::to_value(spec).unwrap();
    assert_eq!(
        spec["linux"]["devices"],
        json!([{"path": "/dev/myzero", "type": "c", "major": 1, "minor": 5,
                "fileMode": 0o666, "uid": 0, "gid": 0}])
    );
    assert_eq!(
        spec["linux"]["resources"]["devices"],
        json!([{"allow": true, "type": "c", "major": 1, "minor": 5, "access": "r"}])
    );
}

/// The capability set, sorted (oci-spec keeps sets unordered).
fn caps_of(spec: &Value) -> Vec<String> {
    let caps = &spec["process"]["capabilities"];
    let set = |key: &str| {
        let mut list: Vec<String> = serde_json::from_value(caps[key].clone()).unwrap();
        list.sort();
        list
    };
    let bounding = set("bounding");
    // Effective and permitted are the same set; nothing is inheritable or ambient.
    assert_eq!(set("effective"), bounding);
    assert_eq!(set("permitted"), bounding);
    assert!(caps.get("inheritable").is_none_or(Value::is_null), "{caps}");
    assert!(caps.get("ambient").is_none_or(Value::is_null), "{caps}");
    bounding
}

fn sorted(caps: &[&str]) -> Vec<String> {
    let mut list: Vec<String> = caps.iter().map(|c| c.to_string()).collect();
    list.sort();
    list
}

fn syscall_allowed(spec: &Value, name: &str) -> bool {
    spec["linux"]["seccomp"]["syscalls"]
        .as_array()
        .unwrap()
        .iter()
        .any(|s| {
            s["action"] == "SCMP_ACT_ALLOW"
                && s.get("args").is_none()
                && s["names"].as_array().unwrap().iter().any(|n| n == name)
        })
}

fn web_spec(extra: &str) -> Value {
    let yaml = format!("services:\n  web:\n    image: x\n    command: [\"true\"]\n{extra}");
    spec_json(&service(&yaml), None)
}

#[test]
fn services_are_confined_like_docker_by_default() {
    let spec = web_spec("");
    assert_eq!(caps_of(&spec), sorted(&DEFAULT_CAPABILITIES));
    assert_eq!(spec["process"]["noNewPrivileges"], true);
    let linux = &spec["linux"];
    assert_eq!(linux["maskedPaths"], json!(MASKED_PATHS));
    assert_eq!(linux["readonlyPaths"], json!(READONLY_PATHS));
    for path in ["/proc/kcore", "/proc/keys", "/sys/firmware"] {
        assert!(MASKED_PATHS.contains(&path), "{path}");
    }
    assert!(READONLY_PATHS.contains(&"/proc/sysrq-trigger"));
    assert_eq!(linux["seccomp"]["defaultAction"], "SCMP_ACT_ERRNO");
    assert_eq!(linux["seccomp"]["defaultErrnoRet"], 1);
    for name in ["mount", "unshare", "setns", "keyctl", "add_key", "bpf"] {
        assert!(!syscall_allowed(&spec, name), "{name}");
    }
    assert!(linux.get("devices").is_none());
    let sys = spec["mounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["destination"] == "/sys")
        .unwrap();
    assert!(sys["options"].as_array().unwrap().contains(&json!("ro")));
}

#[test]
fn privileged_lifts_every_restriction() {
    let web =
        service("services:\n  web:\n    image: x\n    command: [\"true\"]\n    privileged: true\n");
    let devices = [hardening::GuestDevice {
        path: "/dev/vda".into(),
        kind: 'b',
        major: 254,
        minor: 0,
        mode: 0o660,
        uid: 0,
        gid: 6,
    }];
    let spec = build_spec(&SpecInput {
        devices: &devices,
        ..bare_input(&web)
    })
    .unwrap();
    let spec = serde_json::to_value(spec).unwrap();
    assert_eq!(caps_of(&spec), sorted(&dstack_compose::LINUX_CAPABILITIES));
    let linux = &spec["linux"];
    assert!(linux.get("seccomp").is_none(), "{linux}");
    assert_eq!(linux["maskedPaths"], json!([]));
    assert_eq!(linux["readonlyPaths"], json!([]));
    assert_eq!(
        linux["devices"],
        json!([{"path": "/dev/vda", "type": "b", "major": 254, "minor": 0,
                "fileMode": 0o660, "uid": 0, "gid": 6}])
    );
    let sys = spec["mounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["destination"] == "/sys")
        .unwrap();
    assert!(sys["options"].as_array().unwrap().contains(&json!("rw")));
    // no_new_privileges stays on unless asked off, privileged or not.
    assert_eq!(spec["process"]["noNewPrivileges"], true);
}

#[test]
fn cap_add_and_cap_drop_change_capabilities_and_the_filter() {
    let admin = web_spec("    cap_add: [SYS_ADMIN]\n");
    let caps = caps_of(&admin);
    assert_eq!(caps.len(), DEFAULT_CAPABILITIES.len() + 1);
    assert!(caps.contains(&"CAP_SYS_ADMIN".to_string()));
    for name in ["mount", "unshare", "setns", "clone3"] {
        assert!(syscall_allowed(&admin, name), "{name}");
    }
    assert!(!syscall_allowed(&admin, "keyctl"));

    let only_bind = web_spec("    cap_drop: [ALL]\n    cap_add: [CAP_NET_BIND_SERVICE]\n");
    assert_eq!(caps_of(&only_bind), ["CAP_NET_BIND_SERVICE"]);
    // CAP_SYS_CHROOT dropped: so is chroot(2), as docker's profile does.
    assert!(!syscall_allowed(&only_bind, "chroot"));

    let all_but = web_spec("    cap_add: [ALL]\n    cap_drop: [sys_admin, NET_RAW]\n");
    let caps = caps_of(&all_but);
    assert_eq!(caps.len(), dstack_compose::LINUX_CAPABILITIES.len() - 2);
    assert!(!caps.contains(&"CAP_SYS_ADMIN".to_string()));
    assert!(!syscall_allowed(&all_but, "mount"));

    let fewer = web_spec("    cap_drop: [NET_RAW, CAP_MKNOD]\n    cap_add: [CHOWN]\n");
    let caps = caps_of(&fewer);
    assert_eq!(caps.len(), DEFAULT_CAPABILITIES.len() - 2, "{caps:?}");
    assert!(!caps.contains(&"CAP_NET_RAW".to_string()));
}

#[test]
fn security_opt_turns_off_seccomp_or_no_new_privileges() {
    let unconfined = web_spec("    security_opt: [\"seccomp=unconfined\"]\n");
    assert!(unconfined["linux"].get("seccomp").is_none());
    assert_eq!(caps_of(&unconfined), sorted(&DEFAULT_CAPABILITIES));
    assert_eq!(unconfined["linux"]["maskedPaths"], json!(MASKED_PATHS));

    // Left out, not false: see build_spec.
    let nnp_off = web_spec("    security_opt: [\"no-new-privileges:false\"]\n");
    assert!(
        nnp_off["process"].get("noNewPrivileges").is_none(),
        "{}",
        nnp_off["process"]
    );
    assert!(nnp_off["linux"].get("seccomp").is_some());
}
