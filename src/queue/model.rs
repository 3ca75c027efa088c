//! Model test of the queue (proptest against an in-memory model).
