"""Running a command elsewhere than on the caller's thread: thread isolation, go(), the
hand-off between caller and worker, asyncio and the @command decorator."""
