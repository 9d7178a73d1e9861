//! Several stages run one after another on each item, in one runner.
//!
//! Every stage boundary is a hop: a ring push, and a futex wake when the next stage
//! is parked. Where stages outnumber cores, each wake also preempts a busy stage.
//! Chaining light stages (a hash, a cipher) onto a heavy one (a compressor) and
//! replicating the chain keeps each item on one core from start to end, the way a
//! thread pool would run it, while the engine still isolates and restarts it.

use std::fmt;

use super::{find_stage, BoxError, Params, Registered, Stage, StageCode};
use crate::frame::Frame;

/// Registered name of the chain stage; its parameters come from [`Chain::params`].
pub const CHAIN: &str = "ringpipe.chain";

/// Stages run in order on each item, as one stage. Each link's determiner
/// ([`Stage::wants`]) decides for that link alone; the first link that fails ends the
/// item, with a [`ChainError`] naming the link.
///
/// On a thread, chain any stage values:
///
/// ```
/// use ringpipe_engine::{stage_fn, Chain, Pipeline, StageSpec};
/// let chain = Chain::new()
///     .then("upper", stage_fn(|f| Ok(f.bytes_mut().make_ascii_uppercase())))
///     .then("reverse", stage_fn(|f| Ok(f.bytes_mut().reverse())));
/// let p = Pipeline::builder().stage(StageSpec::with_stage("both", chain)).build()?;
/// assert_eq!(&p.submit(b"abc")?.wait()?[..], b"CBA");
/// # p.shutdown();
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// In worker processes (with replicas), chain registered stages by name with
/// [`StageSpec::chain`](crate::StageSpec::chain).
#[derive(Default)]
pub struct Chain {
    links: Vec<(String, Box<dyn Stage>)>,
}

impl Chain {
    /// An empty chain (it passes items on untouched).
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends `stage`; `name` is what a failure of this link says.
    pub fn then(mut self, name: &str, stage: impl Stage + 'static) -> Self {
        self.links.push((name.to_owned(), Box::new(stage)));
        self
    }

    /// Its links' names, in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.links.iter().map(|(n, _)| n.as_str())
    }

    /// A link of a registered chain ([`StageSpec::chain`](crate::StageSpec::chain)):
    /// [`Registered`] stage `S` with its typed parameters, as its name and parameter
    /// bytes.
    ///
    /// ```
    /// # use ringpipe_engine::{BoxError, Frame, Registered, Stage};
    /// # struct Zip;
    /// # impl Stage for Zip { fn process(&mut self, _: &mut Frame<'_>) -> Result<(), BoxError> { Ok(()) } }
    /// # impl Registered for Zip {
    /// #     const NAME: &'static str = "doc.zip";
    /// #     type Params = i32;
    /// #     fn from_params(_: i32) -> Result<Self, BoxError> { Ok(Zip) }
    /// # }
    /// use ringpipe_engine::{Chain, StageSpec};
    /// assert_eq!(Chain::link::<Zip>(3), ("doc.zip", vec![3, 0, 0, 0]));
    /// let hash_then_zip = StageSpec::chain([("doc.hash", vec![]), Chain::link::<Zip>(3)]);
    /// # let _ = hash_then_zip;
    /// ```
    pub fn link<S: Registered + Stage>(params: S::Params) -> (&'static str, Vec<u8>) {
        (S::NAME, params.encode())
    }

    /// The parameter bytes of the registered chain stage (`ringpipe.chain`) for `links`, each a
    /// registered stage's name and its parameters.
    ///
    /// ```
    /// use ringpipe_engine::Chain;
    /// let p = Chain::params([("a.hash", &[][..]), ("a.zip", &[3, 0, 0, 0][..])]);
    /// let links = Chain::parse_params(&p)?;
    /// assert_eq!(links[1], ("a.zip".to_owned(), vec![3, 0, 0, 0]));
    /// # Ok::<(), ringpipe_engine::BoxError>(())
    /// ```
    pub fn params<N: AsRef<str>, P: AsRef<[u8]>>(links: impl IntoIterator<Item = (N, P)>) -> Vec<u8> {
        let mut out = Vec::new();
        for (name, params) in links {
            for part in [name.as_ref().as_bytes(), params.as_ref()] {
                let len = u32::try_from(part.len()).expect("a stage name or parameters over 4 GiB");
                out.extend_from_slice(&len.to_le_bytes());
                out.extend_from_slice(part);
            }
        }
        out
    }

    /// Reads what [`params`](Self::params) wrote; an error says where it is malformed.
    pub fn parse_params(mut p: &[u8]) -> Result<Vec<(String, Vec<u8>)>, BoxError> {
        fn take<'a>(p: &mut &'a [u8], what: &str) -> Result<&'a [u8], BoxError> {
            let len = p.get(..4).ok_or_else(|| format!("chain parameters: truncated {what} length"))?;
            let len = u32::from_le_bytes(len.try_into().expect("4 bytes")) as usize;
            let end = len.checked_add(4).filter(|&end| end <= p.len());
            let end = end.ok_or_else(|| format!("chain parameters: truncated {what}"))?;
            let part = &p[4..end];
            *p = &p[end..];
            Ok(part)
        }
        let mut links = Vec::new();
        while !p.is_empty() {
            let name = String::from_utf8(take(&mut p, "stage name")?.to_vec())?;
            links.push((name, take(&mut p, "stage parameters")?.to_vec()));
        }
        Ok(links)
    }

    /// Builds each link from the stage registry: what the registered chain stage
    /// does in a worker process. An unknown name or a link's bad parameters is an
    /// error naming that link.
    pub fn from_params(p: &[u8]) -> Result<Self, BoxError> {
        let mut chain = Self::new();
        for (name, params) in Self::parse_params(p)? {
            if name == CHAIN {
                return Err("a chain cannot contain a chain".into());
            }
            let factory =
                find_stage(&name).ok_or_else(|| format!("chain: no stage registered as {name:?}"))?;
            let made = (factory.make)(&params).map_err(|e| format!("chain: {name}: {e}"))?;
            let StageCode::Stage(stage) = made else {
                return Err(format!("chain: {name:?} is {}, not a stage", factory.kind).into());
            };
            chain.links.push((name, stage));
        }
        Ok(chain)
    }
}

impl Stage for Chain {
    fn process(&mut self, frame: &mut Frame<'_>) -> Result<(), BoxError> {
        for (name, link) in &mut self.links {
            if link.wants(frame) {
                link.process(frame).map_err(|source| ChainError { link: name.clone(), source })?;
            }
        }
        Ok(())
    }
}

/// A chain's link failed; the item's error message starts with the link's name.
///
/// ```
/// use ringpipe_engine::{stage_fn, Chain, ItemError, Pipeline, StageSpec};
/// let chain = Chain::new().then("ok", stage_fn(|_| Ok(()))).then("bad", stage_fn(|_| Err("no".into())));
/// let p = Pipeline::builder().stage(StageSpec::with_stage("chain", chain)).build()?;
/// let Err(ItemError::Stage { failure, .. }) = p.submit(b"x")?.wait() else { panic!() };
/// assert!(failure.message.contains("bad"), "{failure}"); // the link that failed
/// # p.shutdown();
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct ChainError {
    /// The failing link's name.
    pub link: String,
    /// Its error.
    pub source: BoxError,
}

impl fmt::Display for ChainError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.link, self.source)
    }
}

impl std::error::Error for ChainError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.source)
    }
}

crate::register_stage!(CHAIN, Chain::from_params);

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn parameters_round_trip_and_malformed_ones_are_errors() {
        let p = Chain::params([("x", &b"12"[..]), ("", &[][..])]);
        assert_eq!(
            Chain::parse_params(&p).unwrap(),
            [("x".to_owned(), b"12".to_vec()), (String::new(), vec![])]
        );
        assert!(Chain::parse_params(&[]).unwrap().is_empty());
        let first_link = 4 + 1 + 4 + 2; // a whole link: a valid chain of one
        for cut in (1..p.len()).filter(|&c| c != first_link) {
            let e = Chain::parse_params(&p[..cut]).unwrap_err().to_string();
            assert!(e.contains("truncated"), "{cut}: {e}");
        }
        let huge = [0xff, 0xff, 0xff, 0xff, 1];
        assert!(Chain::parse_params(&huge).is_err());
    }

    #[test]
    #[cfg_attr(miri, ignore = "Miri cannot read linkme's link-time stage table")]
    fn unknown_links_and_nested_chains_are_refused() {
        let e = Chain::from_params(&Chain::params([("no.such.stage", &[][..])])).err().unwrap();
        assert!(e.to_string().contains("no.such.stage"), "{e}");
        let e = Chain::from_params(&Chain::params([(CHAIN, &[][..])])).err().unwrap();
        assert!(e.to_string().contains("chain"), "{e}");
    }
}
