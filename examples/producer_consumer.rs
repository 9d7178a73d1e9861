//! `atbu.mp_pipeline`'s dual-stage producer/consumer example: two process stages run on the
//! same item at once, the first streaming 10 random bytes to the second through a
//! byte ring in shared memory (`atbu.mp_pipeline` uses an OS pipe). Item #0 goes through the
//! `Read`/`Write` interfaces, item #1 through the zero-copy chunk API.
//!
//! ```text
//! cargo run --example producer_consumer
//! ```

use std::io::{Read, Write};

use bytemuck::{Pod, Zeroable};
use ringpipe::stream::{StreamReader, StreamWriter};
use ringpipe::{
    register, BoxError, Consumer, ConsumerSpec, Frame, ItemError, PairSpec, Pipeline, Producer, ProducerSpec,
    Registered,
};

/// The work item (`atbu.mp_pipeline`'s `ProducerConsumerWorkItem`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
struct Item {
    /// 0: through `io::Write`/`io::Read` (`atbu.mp_pipeline`'s `PipeConnectionIO`); 1: chunks.
    use_chunks: u32,
    producer_bytes_written: u32,
    /// What the producer sent.
    producer_data: [u8; 10],
    /// What the consumer received.
    consumer_data: [u8; 10],
    consumer_len: u32,
}

/// Sends 10 random bytes.
struct SendRandom;

impl Producer for SendRandom {
    fn produce(&mut self, frame: &mut Frame<'_>, stream: &mut StreamWriter) -> Result<(), BoxError> {
        let item: &mut Item = frame.header_mut()?;
        std::fs::File::open("/dev/urandom")?.read_exact(&mut item.producer_data)?;
        if item.use_chunks == 0 {
            item.producer_bytes_written = stream.write(&item.producer_data)? as u32;
        } else {
            let mut chunk = stream.write_chunk(item.producer_data.len())?;
            let n = chunk.len();
            chunk.copy_from_slice(&item.producer_data[..n]);
            chunk.commit(n);
            item.producer_bytes_written = n as u32;
        }
        Ok(()) // returning Ok ends the stream: the consumer sees end-of-file next
    }
}

impl Registered for SendRandom {
    const NAME: &'static str = "example.producer";
    type Params = ();
    fn from_params((): ()) -> Result<Self, BoxError> {
        Ok(SendRandom)
    }
}

/// Receives what the producer sends.
struct Receive;

impl Consumer for Receive {
    fn consume(&mut self, frame: &mut Frame<'_>, stream: &mut StreamReader) -> Result<(), BoxError> {
        let item: &mut Item = frame.header_mut()?;
        let mut received = Vec::new();
        if item.use_chunks == 0 {
            stream.read_to_end(&mut received)?;
        } else {
            loop {
                let chunk = stream.read_chunk()?; // borrowed from the ring, no copy
                if chunk.is_empty() {
                    break; // end of stream: the producer finished successfully
                }
                received.extend_from_slice(chunk);
                let n = chunk.len();
                stream.consume(n);
            }
        }
        let n = received.len().min(item.consumer_data.len());
        item.consumer_data[..n].copy_from_slice(&received[..n]);
        item.consumer_len = received.len() as u32;
        Ok(())
    }

    /// Both halves worked on their own copy of the item; bring the producer's fields in.
    fn merge_producer(&mut self, frame: &mut Frame<'_>, producer: &[u8]) -> Result<(), BoxError> {
        let theirs: Item = bytemuck::pod_read_unaligned(&producer[..std::mem::size_of::<Item>()]);
        let item: &mut Item = frame.header_mut()?;
        item.producer_data = theirs.producer_data;
        item.producer_bytes_written = theirs.producer_bytes_written;
        Ok(())
    }
}

impl Registered for Receive {
    const NAME: &'static str = "example.consumer";
    type Params = ();
    fn from_params((): ()) -> Result<Self, BoxError> {
        Ok(Receive)
    }
}

register!(producer: SendRandom);
register!(consumer: Receive);

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(" ")
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    ringpipe::worker_hook();
    let pipeline = Pipeline::builder()
        .pair(PairSpec::new(ProducerSpec::process::<SendRandom>(()), ConsumerSpec::process::<Receive>(())))
        .build()?;
    let tickets = [0u32, 1]
        .map(|use_chunks| pipeline.submit(bytemuck::bytes_of(&Item { use_chunks, ..Zeroable::zeroed() })));
    for (i, ticket) in tickets.into_iter().enumerate() {
        match ticket?.wait() {
            Ok(out) => {
                let item: &Item = out.header()?;
                assert_eq!(item.producer_bytes_written, 10);
                assert_eq!(item.consumer_len, 10);
                assert_eq!(item.producer_data, item.consumer_data);
                println!("Success for #{i}:");
                println!("  {i}: num_bytes={}", item.producer_bytes_written);
                println!("  {i}: p_bytes={}", hex(&item.producer_data));
                println!("  {i}: c_bytes={}", hex(&item.consumer_data));
            }
            Err(ItemError::Stage { failure, .. }) => {
                println!("Something did not go as planned for #{i}:");
                println!("  {i}: Bad thing happened: {failure}");
            }
            Err(e) => return Err(e.into()),
        }
    }
    let report = pipeline.shutdown();
    assert!(report.was_graceful(), "{report:?}");
    Ok(())
}
