//! `keel export`: a run's weights in the Hugging Face Llama layout. STUB: being written.
