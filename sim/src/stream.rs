//! The token loop every streaming API shares, and the trait through which each API shapes it.
//!
//! A stream is: the API's opening frames (role chunk, `message_start`, ...), then one frame per
//! token per choice, then its closing frames (finish reasons, usage, terminator). [`TokenStream`]
//! walks that order lazily, one frame per call, and marks which frames begin a new decode step so
//! that the SSE body knows where inter-token latency goes. Frame bytes are built here; pacing,
//! flushing and faults are [`crate::sse`]'s job.

use std::collections::VecDeque;

use bytes::Bytes;

use crate::textgen::Words;

/// How an API renders its stream. Implementations own their ids and usage and keep whatever
/// state they need (sequence numbers, the text so far).
pub trait StreamShape: Send + 'static {
    /// Frames before the first token.
    fn opening(&mut self, out: &mut VecDeque<Bytes>);
    /// The frame carrying one token of one choice.
    fn token(&mut self, choice: u32, text: &str) -> Bytes;
    /// Frames after the last token.
    fn closing(&mut self, out: &mut VecDeque<Bytes>);
}

/// Whether a frame must wait for a decode step before it is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pace {
    /// Sent as soon as the previous frame is.
    Now,
    /// Carries the first token of a new decode step: one inter-token latency after the previous.
    NextToken,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Opening,
    Tokens { step: u64, choice: u32 },
    Closing,
    Done,
}

/// Frames of one stream, produced lazily in API order.
pub struct TokenStream {
    shape: Box<dyn StreamShape>,
    words: Vec<Words>,
    tokens_per_choice: u64,
    queue: VecDeque<Bytes>,
    phase: Phase,
}

impl TokenStream {
    pub fn new(
        shape: Box<dyn StreamShape>,
        prompt_seed: u64,
        choices: u32,
        tokens_per_choice: u64,
        echo: Option<std::sync::Arc<str>>,
    ) -> Self {
        TokenStream {
            shape,
            words: (0..choices.max(1))
                .map(|c| Words::echoing(prompt_seed, c, echo.clone()))
                .collect(),
            tokens_per_choice,
            queue: VecDeque::new(),
            phase: Phase::Opening,
        }
    }

    /// The next frame, or `None` once the closing frames are out.
    pub fn next_frame(&mut self) -> Option<(Bytes, Pace)> {
        loop {
            if let Some(frame) = self.queue.pop_front() {
                return Some((frame, Pace::Now));
            }
            match self.phase {
                Phase::Opening => {
                    self.shape.opening(&mut self.queue);
                    self.phase = Phase::Tokens { step: 0, choice: 0 };
                }
                Phase::Tokens { step, .. } if step == self.tokens_per_choice => {
                    self.phase = Phase::Closing;
                }
                Phase::Tokens { step, choice } => {
                    let word = self.words[choice as usize]
                        .next()
                        .unwrap_or(std::borrow::Cow::Borrowed(" "));
                    let pace = if choice == 0 && step > 0 {
                        Pace::NextToken
                    } else {
                        Pace::Now
                    };
                    self.phase = if choice as usize + 1 == self.words.len() {
                        Phase::Tokens {
                            step: step + 1,
                            choice: 0,
                        }
                    } else {
                        Phase::Tokens {
                            step,
                            choice: choice + 1,
                        }
                    };
                    return Some((self.shape.token(choice, &word), pace));
                }
                Phase::Closing => {
                    self.shape.closing(&mut self.queue);
                    self.phase = Phase::Done;
                }
                Phase::Done => return None,
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    struct Plain;

    impl StreamShape for Plain {
        fn opening(&mut self, out: &mut VecDeque<Bytes>) {
            out.push_back(Bytes::from_static(b"open"));
        }
        fn token(&mut self, choice: u32, text: &str) -> Bytes {
            Bytes::from(format!("{choice}:{}", text.trim()))
        }
        fn closing(&mut self, out: &mut VecDeque<Bytes>) {
            out.push_back(Bytes::from_static(b"close"));
            out.push_back(Bytes::from_static(b"done"));
        }
    }

    /// Every frame of a shape, as strings.
    pub(crate) fn drain(mut stream: TokenStream) -> Vec<String> {
        std::iter::from_fn(|| stream.next_frame())
            .map(|(b, _)| String::from_utf8(b.to_vec()).unwrap())
            .collect()
    }

    #[test]
    fn order_and_pacing() {
        let mut stream = TokenStream::new(Box::new(Plain), 42, 2, 2, None);
        let frames: Vec<_> = std::iter::from_fn(|| stream.next_frame()).collect();
        let paces: Vec<_> = frames.iter().map(|f| f.1).collect();
        let text: Vec<_> = frames
            .iter()
            .map(|f| String::from_utf8(f.0.to_vec()).unwrap())
            .collect();
        assert_eq!(text.len(), 7);
        assert_eq!(text[0], "open");
        assert!(text[1].starts_with("0:") && text[2].starts_with("1:"));
        assert!(text[3].starts_with("0:") && text[4].starts_with("1:"));
        assert_eq!(&text[5..], ["close", "done"]);
        use Pace::*;
        assert_eq!(paces, [Now, Now, Now, NextToken, Now, Now, Now]);
        assert!(stream.next_frame().is_none());
    }
}
