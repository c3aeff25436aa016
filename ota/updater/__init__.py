"""The device's update path as a pure core (``UpdaterCore``: events in, actions out), the
one ``Transfer`` used for the bundle and for the shadow candidate, and the device record.
No files, sockets, threads or clocks here: the agent is the shell that does the I/O."""
