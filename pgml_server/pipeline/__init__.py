"""What a session owes its client, in order: the FIFO of answers, its rules, and the statements
the server itself runs on a client's upstream connection.

Sans-IO where it can be: `rules` (which frontend message queues which answer, what finishes an
entry) and `internal` (the message sequence of an internal statement) touch no socket; the
consumers and the session executor speak to a session only through `port.SessionPort`.
"""
