//! The simulation's network: messages and beats in flight, delivered
//! after a drawn delay, lost, duplicated or reordered as `NetFaults` say,
//! and cut links.

use raft::eraftpb::{Message, MessageType};
use rand::Rng as _;

use super::Sim;
use crate::replication::replica::Stamp;

/// How the network misbehaves.
#[derive(Debug, Clone, Copy)]
pub struct NetFaults {
    /// Probability that a message is lost.
    pub drop: f64,
    /// Probability that a message is delivered twice.
    pub duplicate: f64,
    /// Delivery delay, uniformly drawn, in virtual milliseconds. Different
    /// delays reorder messages.
    pub delay_ms: (u64, u64),
}

impl NetFaults {
    pub const CALM: NetFaults = NetFaults {
        drop: 0.0,
        duplicate: 0.0,
        delay_ms: (1, 3),
    };
    pub const ROUGH: NetFaults = NetFaults {
        drop: 0.1,
        duplicate: 0.05,
        delay_ms: (1, 40),
    };
}

pub(super) struct InFlight {
    pub(super) at: u64,
    pub(super) seq: u64,
    pub(super) from: u64,
    pub(super) to: u64,
    /// None: a beat.
    pub(super) message: Option<Message>,
    pub(super) stamp: Stamp,
}

impl Sim {
    pub(super) fn send(&mut self, message: Message, stamp: Stamp) {
        let (from, to) = (message.from, message.to);
        self.transmit(from, to, Some(message), stamp);
    }

    /// Puts a message (or, with None, a beat) on the network.
    pub(super) fn transmit(&mut self, from: u64, to: u64, message: Option<Message>, stamp: Stamp) {
        let Some(message) = message else {
            if self.cut.contains(&(from, to)) || self.rng.gen_bool(self.faults.drop) {
                return;
            }
            let delay = self
                .rng
                .gen_range(self.faults.delay_ms.0..=self.faults.delay_ms.1);
            self.seq += 1;
            self.network.push(InFlight {
                at: self.now + delay,
                seq: self.seq,
                from,
                to,
                message: None,
                stamp,
            });
            return;
        };
        if self.trace {
            eprintln!(
                "t={} {:?} {}->{} term {} index {} log_term {} commit {} reject {}",
                self.now,
                message.get_msg_type(),
                message.from,
                message.to,
                message.term,
                message.index,
                message.log_term,
                message.commit,
                message.reject
            );
        }
        let entries = matches!(
            message.get_msg_type(),
            MessageType::MsgAppend | MessageType::MsgSnapshot
        );
        if self.cut.contains(&(message.from, message.to))
            || (entries && self.starved.contains(&message.to))
        {
            let snapshot = message.get_msg_type() == MessageType::MsgSnapshot;
            self.reports
                .push((message.from, message.to, snapshot.then_some(false)));
            return;
        }
        // Snapshots travel on their own reliable stream in the real
        // transport; losing them here only slows things down.
        let snapshot = message.get_msg_type() == MessageType::MsgSnapshot;
        if !snapshot && self.rng.gen_bool(self.faults.drop) {
            return;
        }
        let copies = if self.rng.gen_bool(self.faults.duplicate) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let delay = self
                .rng
                .gen_range(self.faults.delay_ms.0..=self.faults.delay_ms.1);
            self.seq += 1;
            self.network.push(InFlight {
                at: self.now + delay,
                seq: self.seq,
                from,
                to,
                message: Some(message.clone()),
                stamp: stamp.clone(),
            });
        }
    }
}
