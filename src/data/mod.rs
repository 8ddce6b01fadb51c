//! Data: tokenizers, the token-file format, batches, the embedded default corpus, and `prepare`.

pub mod builtin;
pub mod loader;
pub mod prepare;
pub mod tokenfile;
pub mod tokenizer;

pub use loader::{Loader, TokenSet};
pub use tokenizer::{Tok, MAX_VOCAB};
