//! Network namespace handles, a per-thread netns guard, and a topology builder for privileged tests.
#![deny(missing_docs)]
