"""Live capture: a copy of what the agent forwards, filtered per reader, on bounded queues.

Model: ``tap.Tap`` is an output (``adapters/outputs.py`` contract) that sees every packet the agent
forwards, after the pipeline (dedup, filters, cutoff, slicing) and after normalization: exactly
what the pcap output gets. Each reader opens a ``session.Session`` with a ``filter.CaptureFilter``
(pods, namespace, label selector, tcpdump expression, snaplen): the tap turns each matching packet
into a ``transport.records.Record`` and offers it to the session's bounded queue, never waiting: a
full queue drops the record and counts it, per pod. Readers consume records asynchronously
(``async for record in session`` or ``await session.batch()``); ``stream.StreamEncoder`` turns them
into pcapng (one interface per pod, direction in ``epb_flags`` and a comment, drops in the final
Interface Statistics Blocks).

The API another process can implement unchanged (a supervisor relaying N workers' taps): a
``CaptureHost.open_capture(filter, queue_limit) -> Session``; the relay feeds a ``Session`` with
``offer(record)`` and reports its upstream losses with ``count_dropped(pod, n)``. ``CaptureFilter``
is plain data (``as_query``/``parse``), so it crosses a process boundary as text.

Invariant per session and pod: ``received == delivered + dropped + queued`` where ``received``
counts every record offered to the session; nothing else ever blocks the packet path.
"""
