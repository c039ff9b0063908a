"""Files an admitted broadcast and asks for decisions through Python stubs generated from
proto/ by grpcio-tools: proof the proto is a clean contract for other languages.

Usage: python3 pdp_client.py ADDRESS   (the generated modules on PYTHONPATH)
"""
import sys

import grpc

from anchorpdp.v1 import admin_pb2, admin_pb2_grpc, pdp_pb2, pdp_pb2_grpc, types_pb2


def main(address: str) -> None:
    channel = grpc.insecure_channel(address)
    pdp = pdp_pb2_grpc.PolicyDecisionPointStub(channel)
    admin = admin_pb2_grpc.PolicyAdminStub(channel)

    def register(**record):
        return pdp.Register(pdp_pb2.RegisterRequest(**record)).registration

    register(merchant=types_pb2.Merchant(id="py-m1", tier=types_pb2.MERCHANT_TIER_CHINESE_GOLD_SUPPLIER))
    register(provider=types_pb2.ServiceProvider(id="py-p1", display_name="Provider"))
    admin.SetProviderListing(admin_pb2.SetProviderListingRequest(provider_id="py-p1", listed=True, operator="py"))
    anchor = register(anchor=types_pb2.VirtualAnchor(
        id="py-a1", owner_merchant_id="py-m1", provider_id="py-p1",
        image_style=types_pb2.IMAGE_STYLE_REALISTIC_HUMAN, image_reference="oss://py-a1.png"))
    print("anchor", types_pb2.ReviewStatus.Name(anchor.review_status))
    register(driver=types_pb2.Driver(id="py-d1", owner_merchant_id="py-m1", identity_reference="kyc://py-d1"))
    register(room=types_pb2.LivestreamRoom(id="py-r1", owner_merchant_id="py-m1"))
    for kind, filing in [(types_pb2.REGISTRATION_KIND_ANCHOR, "py-a1"),
                         (types_pb2.REGISTRATION_KIND_DRIVER, "py-d1"),
                         (types_pb2.REGISTRATION_KIND_ROOM, "py-r1")]:
        admin.ReviewFiling(admin_pb2.ReviewFilingRequest(
            kind=kind, id=filing, verdict=admin_pb2.VERDICT_APPROVE, reviewer="py"))

    request = pdp_pb2.AuthorizeRequest(
        phase=pdp_pb2.PHASE_START, merchant_id="py-m1", room_id="py-r1", anchor_id="py-a1",
        driver_id="py-d1", livestream_type=types_pb2.LIVESTREAM_TYPE_DAILY_MARKETING,
        drive_mode=types_pb2.DRIVE_MODE_REAL_PERSON, gateway_id="python")
    allowed = pdp.Authorize(request)
    print("start", pdp_pb2.Decision.Name(allowed.decision), bool(allowed.session_id))

    request.drive_mode = types_pb2.DRIVE_MODE_TEXT_TO_VIDEO
    denied = pdp.Authorize(request)
    print("deny", pdp_pb2.Decision.Name(denied.decision),
          ",".join(v.rule_id for v in denied.violations), denied.violations[0].message_zh)

    try:
        pdp.Authorize(pdp_pb2.AuthorizeRequest(phase=pdp_pb2.PHASE_START))
    except grpc.RpcError as error:
        print("invalid", error.code().name, error.details().split(":")[0])


if __name__ == "__main__":
    main(sys.argv[1])
