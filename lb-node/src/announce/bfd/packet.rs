//! BFD control packets (RFC 5880 §4.1), without authentication: the
//! 24-byte mandatory section.
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! |Vers |  Diag   |Sta|P|F|C|A|D|M|  Detect Mult  |    Length     |
//! |                       My Discriminator                        |
//! |                      Your Discriminator                       |
//! |                    Desired Min TX Interval                    |
//! |                   Required Min RX Interval                    |
//! |                 Required Min Echo RX Interval                 |
//! ```

/// The length of a packet without authentication.
pub const LEN: usize = 24;

/// Session states, as on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum State {
    AdminDown = 0,
    Down = 1,
    Init = 2,
    Up = 3,
}

impl State {
    fn from_bits(b: u8) -> State {
        match b & 3 {
            0 => State::AdminDown,
            1 => State::Down,
            2 => State::Init,
            _ => State::Up,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            State::AdminDown => "admin-down",
            State::Down => "down",
            State::Init => "init",
            State::Up => "up",
        }
    }
}

/// Diagnostic codes (RFC 5880 §4.1).
pub mod diag {
    pub const NONE: u8 = 0;
    pub const DETECTION_TIME_EXPIRED: u8 = 1;
    pub const NEIGHBOR_SIGNALED_DOWN: u8 = 3;
    pub const ADMINISTRATIVELY_DOWN: u8 = 7;

    pub fn name(code: u8) -> &'static str {
        match code {
            0 => "none",
            1 => "control detection time expired",
            2 => "echo function failed",
            3 => "neighbor signaled session down",
            4 => "forwarding plane reset",
            5 => "path down",
            6 => "concatenated path down",
            7 => "administratively down",
            8 => "reverse concatenated path down",
            _ => "unknown",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    pub diag: u8,
    pub state: State,
    pub poll: bool,
    pub final_: bool,
    pub detect_mult: u8,
    pub my_discriminator: u32,
    pub your_discriminator: u32,
    /// Microseconds.
    pub desired_min_tx: u32,
    pub required_min_rx: u32,
    pub required_min_echo_rx: u32,
}

impl Packet {
    pub fn encode(&self) -> [u8; LEN] {
        let mut b = [0u8; LEN];
        b[0] = (1 << 5) | (self.diag & 0x1f);
        b[1] = ((self.state as u8) << 6)
            | if self.poll { 0x20 } else { 0 }
            | if self.final_ { 0x10 } else { 0 };
        b[2] = self.detect_mult;
        b[3] = LEN as u8;
        b[4..8].copy_from_slice(&self.my_discriminator.to_be_bytes());
        b[8..12].copy_from_slice(&self.your_discriminator.to_be_bytes());
        b[12..16].copy_from_slice(&self.desired_min_tx.to_be_bytes());
        b[16..20].copy_from_slice(&self.required_min_rx.to_be_bytes());
        b[20..24].copy_from_slice(&self.required_min_echo_rx.to_be_bytes());
        b
    }

    /// A packet, or why it must be discarded (the checks of RFC 5880
    /// §6.8.6 that need no session).
    pub fn decode(b: &[u8]) -> Result<Packet, &'static str> {
        if b.len() < LEN {
            return Err("shorter than 24 bytes");
        }
        if b[0] >> 5 != 1 {
            return Err("not BFD version 1");
        }
        let length = usize::from(b[3]);
        if length < LEN || length > b.len() {
            return Err("bad length");
        }
        let flags = b[1];
        if flags & 0x04 != 0 {
            return Err("authenticated packets are not supported");
        }
        if flags & 0x01 != 0 {
            return Err("the multipoint bit is set");
        }
        let word = |at: usize| u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
        let p = Packet {
            diag: b[0] & 0x1f,
            state: State::from_bits(flags >> 6),
            poll: flags & 0x20 != 0,
            final_: flags & 0x10 != 0,
            detect_mult: b[2],
            my_discriminator: word(4),
            your_discriminator: word(8),
            desired_min_tx: word(12),
            required_min_rx: word(16),
            required_min_echo_rx: word(20),
        };
        if p.detect_mult == 0 {
            return Err("detect multiplier 0");
        }
        if p.my_discriminator == 0 {
            return Err("my discriminator 0");
        }
        if p.your_discriminator == 0 && !matches!(p.state, State::Down | State::AdminDown) {
            return Err("your discriminator 0 outside Down");
        }
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Packet {
        Packet {
            diag: diag::NONE,
            state: State::Up,
            poll: true,
            final_: false,
            detect_mult: 3,
            my_discriminator: 7,
            your_discriminator: 9,
            desired_min_tx: 100_000,
            required_min_rx: 100_000,
            required_min_echo_rx: 0,
        }
    }

    #[test]
    fn round_trips_byte_for_byte() {
        let b = sample().encode();
        assert_eq!(b[0], 0x20, "version 1, no diagnostic");
        assert_eq!(b[1], 0xe0, "Up, Poll");
        assert_eq!(&b[2..4], &[3, 24]);
        assert_eq!(Packet::decode(&b), Ok(sample()));
    }

    /// A first packet of a session: state Down, 1 s intervals, multiplier
    /// 5, no discriminator of ours yet.
    #[test]
    fn decodes_a_first_packet() {
        let b = [
            0x20, 0x40, 5, 24, 0x8a, 0x1b, 0x2c, 0x3d, 0, 0, 0, 0, 0, 0x0f, 0x42, 0x40, 0, 0x0f,
            0x42, 0x40, 0, 0, 0, 0,
        ];
        let p = Packet::decode(&b).expect("valid");
        assert_eq!(p.state, State::Down);
        assert_eq!(p.detect_mult, 5);
        assert_eq!(p.your_discriminator, 0);
        assert_eq!(p.desired_min_tx, 1_000_000);
    }

    #[test]
    fn refuses_what_rfc_5880_discards() {
        let good = sample().encode();
        let with = |at: usize, v: u8| {
            let mut b = good;
            b[at] = v;
            b
        };
        assert!(Packet::decode(&good[..20]).is_err());
        assert_eq!(Packet::decode(&with(0, 0x40)), Err("not BFD version 1"));
        assert_eq!(Packet::decode(&with(3, 30)), Err("bad length"));
        assert_eq!(Packet::decode(&with(3, 20)), Err("bad length"));
        assert!(Packet::decode(&with(1, 0xe4)).is_err(), "authentication");
        assert!(Packet::decode(&with(1, 0xe1)).is_err(), "multipoint");
        assert_eq!(Packet::decode(&with(2, 0)), Err("detect multiplier 0"));
        let mut b = good;
        b[4..8].fill(0);
        assert_eq!(Packet::decode(&b), Err("my discriminator 0"));
        let mut b = good;
        b[8..12].fill(0);
        assert_eq!(Packet::decode(&b), Err("your discriminator 0 outside Down"));
        b[1] = 0x40;
        assert!(Packet::decode(&b).is_ok(), "allowed in Down");
    }

    #[test]
    fn garbage_never_panics() {
        let mut seed = 11u32;
        for len in 0..64 {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                    (seed >> 16) as u8
                })
                .collect();
            let _ = Packet::decode(&bytes);
        }
    }
}
