use dstack_compose::Compose;
use serde_json::Value;

use super::*;

const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\nwww:x:33:33:www:/var/www:/bin/false\napp:x:1000:1000::/home/app:/bin/sh\n";
const GROUP: &str = "root:x:0:\nwww:x:33:\ndocker:x:999:app,www\napp:x:1000:\n";

fn image_config(json: Value) -> ImageConfig {
    serde_json::from_value(json).unwrap()
}

fn service(yaml: &str) -> Service {
    Compose::parse(yaml).unwrap().services["web"].clone()
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
        nofile: 1024,
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
    assert_eq!(namespaces, ["pid", "ipc", "uts", "mount"]);
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
    let err = build_spec(&SpecInput {
        name: "web",
        service: &web,
        image: None,
        rootfs: Path::new("/r"),
        passwd: None,
        group: None,
        binds: &[],
        nofile: 1024,
    })
    .unwrap_err();
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
fn hosts_map_every_service_to_loopback() {
    assert_eq!(
        hosts_file(["backend", "web"]),
        "127.0.0.1\tlocalhost backend web\n::1\tlocalhost ip6-localhost ip6-loopback\n"
    );
    assert_eq!(
        resolv_conf(&["10.0.2.3".into(), "1.1.1.1".into()]),
        "nameserver 10.0.2.3\nnameserver 1.1.1.1\n"
    );
}
