"""TLS for the client hop, without sockets: OpenSSL over memory buffers.

A client that sends SSLRequest and gets ``S`` continues with a TLS handshake on
the same TCP connection.  ``ServerTls`` is that TLS endpoint as a pure
function of bytes: ``receive(ciphertext)`` returns the plaintext it yielded
and the ciphertext to send back (handshake records, session tickets), and
``send(plaintext)`` returns the records to write.

Why not the event loop's own TLS transport: that layers a second protocol
object (with its own buffers, state machine and Python-level calls per record)
between the socket and the gateway on every read and write.  Here a request
costs one ``SSL_read`` and a response one ``SSL_write`` on memory BIOs, called
straight from the connection's socket callbacks, and write-buffer backpressure
stays on the TCP transport, where the gateway already watches it.

Failures raise ``TlsError`` (the shell closes the connection; nothing can be
said to a peer whose handshake failed).  A close_notify from the peer sets
``closed``.
"""

from __future__ import annotations

import ssl
from typing import Final

_READ_SIZE: Final = 16 * 1024  # one TLS record at most; larger sizes cost a big allocation per read


class TlsError(Exception):
    """The TLS session failed: bad handshake, bad record, or a protocol error."""


class ServerTls:
    __slots__ = ("_in", "_obj", "_out", "closed", "established")

    def __init__(self, context: ssl.SSLContext) -> None:
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self._obj = context.wrap_bio(self._in, self._out, server_side=True)
        self.established = False
        self.closed = False

    def receive(self, data: bytes) -> tuple[bytes, bytes]:
        """Ciphertext from the peer in; returns (plaintext, ciphertext to send back)."""
        incoming = self._in
        incoming.write(data)
        if not self.established:
            try:
                self._obj.do_handshake()
            except ssl.SSLWantReadError:
                return b"", self._out.read()
            except (ssl.SSLError, ValueError) as exc:
                raise TlsError(f"TLS handshake failed: {exc}") from None
            self.established = True
        read = self._obj.read
        chunks: list[bytes] = []
        try:
            while True:
                chunk = read(_READ_SIZE)
                if not chunk:
                    self.closed = True
                    break
                chunks.append(chunk)
                # A read takes a whole record (at most 16 kB of plaintext), so
                # with no ciphertext left there is nothing more: stopping here
                # saves the failing read, and its exception, on every request.
                if not incoming.pending:
                    break
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLZeroReturnError:
            self.closed = True
        except (ssl.SSLError, ValueError) as exc:
            raise TlsError(f"TLS error: {exc}") from None
        out = self._out
        back = out.read() if out.pending else b""
        if len(chunks) == 1:
            return chunks[0], back
        return b"".join(chunks), back

    def send(self, data: bytes) -> bytes:
        """Plaintext in; returns the TLS records to write to the peer."""
        write = self._obj.write
        try:
            done = write(data)
            if done < len(data):
                view = memoryview(data)
                while done < len(data):
                    done += write(view[done:])
        except (ssl.SSLError, ValueError) as exc:
            raise TlsError(f"TLS error: {exc}") from None
        return self._out.read()
