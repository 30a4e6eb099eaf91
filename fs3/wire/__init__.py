"""fs3's framed TCP protocol and its contracts: frames (:mod:`.framing`), servers and
clients of them (:mod:`.server`, :mod:`.client`), message ids (:mod:`.ops`), error codes
(:mod:`.codes`), the CRC32C that guards chunk bytes (:mod:`.checksum`), and how errors cross
gRPC (:mod:`.status`, for hai's services too). Storage, meta and the client all import it;
it imports none of them.
"""
