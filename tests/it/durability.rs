//! fsync before every answer, shown with strace (written by the durability work).
