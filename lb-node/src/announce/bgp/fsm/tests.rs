//! The session state machine's transitions.

use super::*;

fn config(peer_as: u32) -> SessionConfig {
    SessionConfig {
        local_as: 65001,
        router_id: Ipv4Addr::new(10, 0, 0, 1),
        peer_as,
        hold_time: 9,
        attributes: Attributes {
            communities: vec![0xfde9_0064],
            local_pref: Some(150),
            ..Attributes::default()
        },
        next_hop_v4: None,
        next_hop_v6: None,
        graceful_restart: None,
    }
}

fn routes(list: &[&str]) -> Arc<Routes> {
    Arc::new(
        list.iter()
            .map(|s| (s.parse().expect("net"), RouteTags::default()))
            .collect(),
    )
}

fn open(asn: u32, families: Vec<(u16, u8)>, four_octet: bool) -> Message {
    Message::Open(Open {
        asn,
        hold_time: 6,
        bgp_id: Ipv4Addr::new(10, 0, 0, 254),
        families,
        four_octet,
        route_refresh: true,
        graceful_restart: None,
    })
}

/// Through OPEN and KEEPALIVE to Established; returns the actions of
/// the last step.
fn establish(s: &mut Session, theirs: Message) -> Vec<Action> {
    let a = s.handle(Event::Connected {
        local: "10.0.0.1".parse().expect("ip"),
    });
    assert!(matches!(a.as_slice(), [Action::Send(Message::Open(_))]));
    assert_eq!(
        s.handle(Event::Received(theirs)),
        vec![Action::Send(Message::Keepalive)]
    );
    s.handle(Event::Received(Message::Keepalive))
}

fn sent(actions: &[Action]) -> Vec<&Message> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send(m) => Some(m),
            _ => None,
        })
        .collect()
}

/// Routes with their own communities go in UPDATEs of their own,
/// with the session's communities added; a change of a route's
/// communities alone announces it again, and nothing else.
#[test]
fn each_route_carries_its_services_communities() {
    let mut s = Session::new(config(65000));
    let tagged = |c: Vec<u32>, l: Vec<(u32, u32, u32)>| RouteTags {
        communities: c,
        large_communities: l,
    };
    let mut wanted = Routes::new();
    wanted.insert("192.0.2.10/32".parse().expect("net"), RouteTags::default());
    wanted.insert("192.0.2.11/32".parse().expect("net"), RouteTags::default());
    wanted.insert(
        "192.0.2.12/32".parse().expect("net"),
        tagged(vec![0xfde9_0001, 0xfde9_0064], vec![(65001, 1, 2)]),
    );
    s.handle(Event::Routes(Arc::new(wanted.clone())));
    let a = establish(&mut s, open(65000, vec![IPV4_UNICAST], true));
    let updates: Vec<(
        Vec<IpNet>,
        Vec<u32>,
        Vec<crate::announce::bgp::codec::LargeCommunity>,
    )> = sent(&a)
        .into_iter()
        .filter_map(|m| match m {
            Message::Update {
                announced,
                attributes: Some(at),
                ..
            } => Some((
                announced.clone(),
                at.communities.clone(),
                at.large_communities.clone(),
            )),
            _ => None,
        })
        .collect();
    assert_eq!(updates.len(), 2, "{updates:?}");
    assert!(updates.contains(&(
        vec![
            "192.0.2.10/32".parse().expect("net"),
            "192.0.2.11/32".parse().expect("net")
        ],
        vec![0xfde9_0064],
        vec![]
    )));
    // The session's 65001:100 once, with the route's own.
    assert!(updates.contains(&(
        vec!["192.0.2.12/32".parse().expect("net")],
        vec![0xfde9_0001, 0xfde9_0064],
        vec![(65001, 1, 2)]
    )));
    // Only the communities of one route change: that route again.
    wanted.insert(
        "192.0.2.11/32".parse().expect("net"),
        tagged(vec![7], vec![]),
    );
    let a = s.handle(Event::Routes(Arc::new(wanted)));
    assert!(
        matches!(
            sent(&a).as_slice(),
            [Message::Update { announced, withdrawn, attributes: Some(at) }]
                if announced == &vec!["192.0.2.11/32".parse::<IpNet>().expect("net")]
                    && withdrawn.is_empty()
                    && at.communities == vec![7, 0xfde9_0064]
        ),
        "{a:?}"
    );
}

#[test]
fn only_the_families_both_sides_negotiated_are_sent() {
    let mut s = Session::new(config(65000));
    s.handle(Event::Routes(routes(&[
        "192.0.2.10/32",
        "2001:db8::10/128",
    ])));
    // The peer speaks IPv4 unicast only; and an IPv6 next hop exists.
    let mut c = config(65000);
    c.next_hop_v6 = Some("2001:db8::1".parse().expect("ip"));
    let mut s2 = Session::new(c);
    s2.handle(Event::Routes(routes(&[
        "192.0.2.10/32",
        "2001:db8::10/128",
    ])));
    for s in [&mut s, &mut s2] {
        let a = establish(s, open(65000, vec![IPV4_UNICAST], true));
        let updates = sent(&a);
        assert_eq!(updates.len(), 1, "{a:?}");
        assert!(
            matches!(updates[0], Message::Update { announced, .. } if announced.len() == 1 && matches!(announced[0], IpNet::V4(_)))
        );
        assert_eq!(s.negotiated().expect("terms").hold_time, 6);
    }
    // No multiprotocol capability at all: IPv4 unicast is implied.
    let mut s = Session::new(config(65000));
    s.handle(Event::Routes(routes(&["192.0.2.10/32"])));
    let a = establish(&mut s, open(65000, vec![], true));
    assert_eq!(sent(&a).len(), 1);
    // IPv6 only: the IPv4 route waits.
    let mut s = Session::new(config(65000));
    s.handle(Event::Routes(routes(&["192.0.2.10/32"])));
    let a = establish(&mut s, open(65000, vec![IPV6_UNICAST], true));
    assert!(sent(&a).is_empty(), "{a:?}");
}

#[test]
fn a_peer_without_four_octet_asns_gets_as_trans_and_as4_path() {
    let mut c = config(65000);
    c.local_as = 4_200_000_001;
    let mut s = Session::new(c);
    s.handle(Event::Routes(routes(&["192.0.2.10/32"])));
    let a = establish(&mut s, open(65000, vec![IPV4_UNICAST], false));
    let Some(Message::Update {
        attributes: Some(attributes),
        ..
    }) = sent(&a).first().copied()
    else {
        panic!("an UPDATE: {a:?}")
    };
    assert!(!attributes.four_octet);
    let bytes = sent(&a)[0].encode();
    // AS_PATH (type 2): one AS_SEQUENCE of one two-octet ASN, AS_TRANS.
    assert!(
        bytes
            .windows(7)
            .any(|w| w == [0x40, 2, 4, 2, 1, 0x5b, 0xa0])
    );
    // AS4_PATH (type 17) with the real ASN.
    let asn = 4_200_000_001u32.to_be_bytes();
    assert!(
        bytes
            .windows(9)
            .any(|w| w[..5] == [0xc0, 17, 6, 2, 1] && w[5..] == asn)
    );
    // iBGP or a four-octet peer: no AS4_PATH.
    let mut s = Session::new(config(65000));
    s.handle(Event::Routes(routes(&["192.0.2.10/32"])));
    let a = establish(&mut s, open(65000, vec![IPV4_UNICAST], true));
    assert!(!sent(&a)[0].encode().windows(2).any(|w| w == [0xc0, 17]));
}

#[test]
fn unexpected_messages_get_the_fsm_error_of_their_state_and_notifications_none() {
    let fsm = |subcode| {
        Action::Send(Message::Notification {
            code: error::FSM,
            subcode,
            data: vec![],
        })
    };
    // OpenSent: a KEEPALIVE before the OPEN.
    let mut s = Session::new(config(65000));
    s.handle(Event::Connected {
        local: "10.0.0.1".parse().expect("ip"),
    });
    let a = s.handle(Event::Received(Message::Keepalive));
    assert_eq!(a[0], fsm(error::FSM_IN_OPEN_SENT));
    assert_eq!(s.state(), State::Closed);
    // OpenConfirm: an UPDATE, or a second OPEN.
    for m in [
        Message::Update {
            withdrawn: vec![],
            announced: vec![],
            attributes: None,
        },
        open(65000, vec![], true),
    ] {
        let mut s = Session::new(config(65000));
        s.handle(Event::Connected {
            local: "10.0.0.1".parse().expect("ip"),
        });
        s.handle(Event::Received(open(65000, vec![], true)));
        let a = s.handle(Event::Received(m));
        assert_eq!(a[0], fsm(error::FSM_IN_OPEN_CONFIRM));
        assert!(matches!(a[1], Action::Close { clean: false, .. }));
    }
    // Established: an OPEN gets 5/3.
    let mut s = Session::new(config(65000));
    establish(&mut s, open(65000, vec![], true));
    let a = s.handle(Event::Received(open(65000, vec![], true)));
    assert_eq!(a[0], fsm(error::FSM_IN_ESTABLISHED));
    // A NOTIFICATION is never answered.
    let mut s = Session::new(config(65000));
    establish(&mut s, open(65000, vec![], true));
    let a = s.handle(Event::Received(Message::Notification {
        code: 6,
        subcode: 4,
        data: vec![],
    }));
    assert!(sent(&a).is_empty(), "{a:?}");
    assert!(matches!(a[0], Action::Close { clean: false, .. }));
    // The wrong AS: 2/2.
    let mut s = Session::new(config(65000));
    s.handle(Event::Connected {
        local: "10.0.0.1".parse().expect("ip"),
    });
    let a = s.handle(Event::Received(open(64999, vec![], true)));
    assert_eq!(
        a[0],
        Action::Send(Message::Notification {
            code: error::OPEN,
            subcode: error::OPEN_BAD_PEER_AS,
            data: vec![]
        })
    );
}

#[test]
fn routes_follow_changes_refresh_and_a_stop_withdraws_then_ceases() {
    let mut s = Session::new(config(65001));
    s.handle(Event::Routes(routes(&["192.0.2.10/32", "10.96.0.0/12"])));
    let a = establish(&mut s, open(65001, vec![IPV4_UNICAST], true));
    // iBGP: empty AS path, LOCAL_PREF kept.
    let Some(Message::Update {
        announced,
        attributes: Some(attr),
        ..
    }) = sent(&a).first().copied()
    else {
        panic!("{a:?}")
    };
    assert_eq!(announced.len(), 2);
    assert!(attr.as_path.is_empty());
    assert_eq!(attr.local_pref, Some(150));
    assert_eq!(attr.communities, vec![0xfde9_0064]);
    // One route goes, one comes.
    let a = s.handle(Event::Routes(routes(&["192.0.2.11/32", "10.96.0.0/12"])));
    assert_eq!(sent(&a).len(), 2);
    assert!(a.contains(&Action::RoutesUpdated {
        announced: 1,
        withdrawn: 1,
        total: 2
    }));
    // A refresh: everything of the family again.
    let a = s.handle(Event::Received(Message::RouteRefresh { afi: 1, safi: 1 }));
    assert!(matches!(sent(&a)[0], Message::Update { announced, .. } if announced.len() == 2));
    // Keepalives only once the OPENs are exchanged.
    assert_eq!(
        s.handle(Event::KeepaliveDue),
        vec![Action::Send(Message::Keepalive)]
    );
    let a = s.handle(Event::Stop);
    assert!(matches!(sent(&a)[0], Message::Update { withdrawn, .. } if withdrawn.len() == 2));
    assert_eq!(
        sent(&a)[1],
        &Message::Notification {
            code: error::CEASE,
            subcode: error::CEASE_ADMINISTRATIVE_SHUTDOWN,
            data: vec![]
        }
    );
    assert!(matches!(a.last(), Some(Action::Close { clean: true, .. })));
    assert!(s.handle(Event::KeepaliveDue).is_empty(), "closed");
}

#[test]
fn graceful_restart_end_of_rib_once_settled_and_a_stop_leaves_the_routes() {
    let gr = GrConfig {
        restart_time: 30,
        restarting: true,
    };
    let mut s = Session::new(SessionConfig {
        graceful_restart: Some(gr),
        ..config(65000)
    });
    s.handle(Event::Routes(routes(&["192.0.2.10/32"])));
    let a = s.handle(Event::Connected {
        local: "10.0.0.1".parse().expect("ip"),
    });
    let Some(Message::Open(ours)) = sent(&a).first().copied() else {
        panic!("{a:?}")
    };
    assert_eq!(
        ours.graceful_restart,
        Some(GracefulRestart {
            restarting: true,
            time: 30,
            families: vec![(1, 1, true), (2, 1, true)],
        })
    );
    let Message::Open(mut theirs) = open(65000, vec![IPV4_UNICAST], true) else {
        unreachable!()
    };
    theirs.graceful_restart = Some(GracefulRestart::default());
    s.handle(Event::Received(Message::Open(theirs)));
    let a = s.handle(Event::Received(Message::Keepalive));
    // The routes, but no End-of-RIB before the member settled.
    assert!(
        matches!(sent(&a).as_slice(), [Message::Update { .. }]),
        "{a:?}"
    );
    let a = s.handle(Event::Settled);
    assert_eq!(
        sent(&a),
        vec![&Message::EndOfRib { afi: 1, safi: 1 }],
        "only the negotiated family"
    );
    assert!(s.handle(Event::Settled).is_empty(), "once");
    // A stop: no withdrawal, no NOTIFICATION.
    let a = s.handle(Event::Stop);
    assert!(sent(&a).is_empty(), "{a:?}");
    assert!(matches!(a.last(), Some(Action::Close { clean: true, .. })));

    // A peer without the capability: the usual withdraw and Cease, and
    // no End-of-RIB.
    let mut s = Session::new(SessionConfig {
        graceful_restart: Some(gr),
        ..config(65000)
    });
    s.handle(Event::Routes(routes(&["192.0.2.10/32"])));
    s.handle(Event::Settled);
    let a = establish(&mut s, open(65000, vec![IPV4_UNICAST], true));
    assert!(
        !sent(&a)
            .iter()
            .any(|m| matches!(m, Message::EndOfRib { .. }))
    );
    let a = s.handle(Event::Stop);
    assert!(matches!(sent(&a)[0], Message::Update { withdrawn, .. } if withdrawn.len() == 1));
}

#[test]
fn the_hold_timer_and_malformed_input_end_the_session_with_their_notification() {
    let mut s = Session::new(config(65000));
    establish(&mut s, open(65000, vec![], true));
    let a = s.handle(Event::HoldTimerExpired);
    assert!(matches!(
        &a[0],
        Action::Send(Message::Notification { code: 4, .. })
    ));
    let mut s = Session::new(config(65000));
    establish(&mut s, open(65000, vec![], true));
    let e = DecodeError {
        code: 1,
        subcode: 1,
        data: vec![],
        reason: "marker".into(),
    };
    let a = s.handle(Event::Malformed(e));
    assert!(matches!(
        &a[0],
        Action::Send(Message::Notification {
            code: 1,
            subcode: 1,
            ..
        })
    ));
    assert!(matches!(a[1], Action::Close { clean: false, .. }));
}
