use super::*;

fn load(text: &str) -> Result<Config, ConfigError> {
    let file = Path::new("/etc/lb-node/member.toml");
    Config::validate(parse_toml(text, file)?, file)
}

const NODE: &str = "[node]\nid = 1\n";

#[test]
fn the_kubernetes_example_loads() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/kubernetes.toml");
    let config = Config::load(&path).expect("the example is valid");
    let SourceConfig::Kubernetes(k) = config.source else {
        panic!("a kubernetes source");
    };
    assert_eq!(
        k.kubeconfig.as_deref(),
        Some(Path::new("/etc/lb-node/kubeconfig"))
    );
    assert_eq!(k.address_pools.len(), 2);
    assert_eq!(k.batch_window, Duration::from_millis(5));
    assert!(k.translate.handle_classless);
}

#[test]
fn kubernetes_defaults_and_relative_kubeconfig() {
    let config = load(&format!(
        "{NODE}[source.kubernetes]\nkubeconfig = \"kube.yaml\"\n"
    ))
    .expect("valid");
    let SourceConfig::Kubernetes(k) = config.source else {
        panic!("a kubernetes source");
    };
    assert_eq!(
        k.kubeconfig.as_deref(),
        Some(Path::new("/etc/lb-node/kube.yaml"))
    );
    assert_eq!(k.namespace, None);
    assert!(k.address_pools.is_empty());
    assert_eq!(
        k.translate,
        crate::source::kubernetes::translate::TranslateConfig::default()
    );
}

#[test]
fn bad_kubernetes_settings_name_their_field() {
    let cases = [
        (
            "address_pools = [\"192.0.2.1/24\"]",
            "source.kubernetes.address_pools[0]",
            "host bits",
        ),
        (
            "address_pools = [\"nope\"]",
            "source.kubernetes.address_pools[0]",
            "not a network",
        ),
        (
            "default_scheduler = \"fastest\"",
            "source.kubernetes.default_scheduler",
            "fastest",
        ),
        (
            "default_forwarding = \"nat\"",
            "source.kubernetes.default_forwarding",
            "nat",
        ),
        (
            "batch_window = \"5s\"",
            "source.kubernetes.batch_window",
            "at most 1s",
        ),
        (
            "batch_window = \"soon\"",
            "source.kubernetes.batch_window",
            "soon",
        ),
        (
            "load_balancer_class = \"\"",
            "source.kubernetes.load_balancer_class",
            "empty",
        ),
        (
            "watch_everything = true",
            "source.kubernetes",
            "unknown field",
        ),
    ];
    for (line, field, words) in cases {
        let e = load(&format!("{NODE}[source.kubernetes]\n{line}\n")).expect_err(line);
        let text = e.to_string();
        assert!(
            text.contains(field) && text.contains(words),
            "{line}: {text}"
        );
    }
}

#[test]
fn exactly_one_source() {
    let both = load(&format!(
        "{NODE}[source.file]\npath = \"s.toml\"\n[source.kubernetes]\n"
    ))
    .expect_err("two sources");
    assert!(both.to_string().contains("configure one"), "{both}");
    let none = load(&format!("{NODE}[source]\n")).expect_err("no source");
    assert!(none.to_string().contains("[source.kubernetes]"), "{none}");
}
