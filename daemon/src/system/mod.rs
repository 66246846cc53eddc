//! How migd lives as a system service: systemd notify and watchdog, signals, and process
//! hardening (no core dumps, non-dumpable, memory locking, user switch, Landlock sandbox).
