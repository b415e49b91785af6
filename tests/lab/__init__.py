"""Namespace test lab for pptp-fixup.

Import as ``lab`` with ``tests/`` on ``sys.path``.  Modules:

- ``lab.netns``          -- ``Lab``: router/client/server namespaces, pptpd
- ``lab.ppp``            -- PPP FCS-16 and async-HDLC framing
- ``lab.pptp_proto``     -- RFC 2637 control messages and enhanced GRE
- ``lab.pptp_client``    -- drive the real ``pptp`` client (``RealClient``)
- ``lab.synthetic_pns``  -- our own PPTP client (run with ``python3 -m``)
"""
