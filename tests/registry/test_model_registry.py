"""ModelRegistry: ids, curation life cycle, enumeration and every revert path.

The shared deployment already holds one model, TinyVicuna, at index 0 and
approved (the ``tiny_vicuna`` fixture); tests add their own models on top.
"""

import pytest
from eth_utils import keccak
from hexbytes import HexBytes

pytestmark = pytest.mark.usefixtures("deployment")

# The API reference's model and id (the ``tiny_vicuna`` fixture adds and approves it).
TINY_VICUNA_REPO = "CohereForAI/TinyVicuna-1B-32k-GGUF"
TINY_VICUNA_FILE = "tiny-vicuna-1b.q4_k_m.gguf"
TINY_VICUNA_ID = HexBytes("0x0b75a2061e70e736924a30c0a327db7ab719402129f76f631adbd7b7a5a5bced")

# ModelRegistry.Status
PENDING, APPROVED, DEACTIVATED = 1, 2, 3

REPO = "TheBloke/Llama-2-7B-GGUF"
FILE = "llama-2-7b.Q4_K_M.gguf"
SHA = bytes.fromhex("11" * 32)
SIZE = 4_081_004_224
META = '{"quant":"Q4_K_M","ctx":4096}'
UNKNOWN_ID = b"\x42" * 32
MAX_NAME = 256
MAX_METADATA = 2048


def model_id(repo, file):
    return keccak(text=f"{repo}/{file}")


@pytest.fixture
def pending(model_registry, curator):
    """A second model, added but not approved (index 1)."""
    model_registry.addModel(REPO, FILE, SHA, SIZE, META, sender=curator)
    return model_id(REPO, FILE)


# ------------------------------------------------------------------ model ids


def test_model_id_test_vector(model_registry):
    # The API reference's id: keccak256("CohereForAI/TinyVicuna-1B-32k-GGUF/tiny-vicuna-1b.q4_k_m.gguf").
    assert model_registry.modelIdOf(TINY_VICUNA_REPO, TINY_VICUNA_FILE) == TINY_VICUNA_ID


def test_model_id_test_vector_after_add(model_registry, tiny_vicuna):
    # The tiny_vicuna fixture takes its id from the ModelAdded event.
    assert tiny_vicuna == TINY_VICUNA_ID
    model = model_registry.getModel(TINY_VICUNA_ID)
    assert model.repo == TINY_VICUNA_REPO
    assert model.file == TINY_VICUNA_FILE
    assert model.sha256Hash != b"\x00" * 32
    assert model.size > 0
    assert model.index == 0
    assert model.status == APPROVED
    assert model_registry.modelIdAt(0) == TINY_VICUNA_ID


def test_model_id_of_matches_python_keccak(model_registry):
    assert model_registry.modelIdOf(REPO, FILE) == model_id(REPO, FILE)
    # modelIdOf is a pure hash and does not validate the repo shape.
    assert model_registry.modelIdOf("no-slash", "f") == model_id("no-slash", "f")


# ------------------------------------------------------------------- addModel


def test_add_model_stores_record_and_emits(model_registry, curator):
    receipt = model_registry.addModel(REPO, FILE, SHA, SIZE, META, sender=curator)
    mid = model_id(REPO, FILE)
    assert receipt.events == [
        model_registry.ModelAdded(
            modelId=mid, repo=REPO, file=FILE, sha256Hash=SHA, size=SIZE, index=1
        )
    ]
    assert receipt.return_value == mid
    model = model_registry.getModel(mid)
    assert (model.sha256Hash, model.size, model.index, model.status) == (SHA, SIZE, 1, PENDING)
    assert (model.repo, model.file, model.metadata) == (REPO, FILE, META)
    assert model_registry.exists(mid)
    assert not model_registry.isApproved(mid)
    assert model_registry.sessionModel(mid) == (False, 1)
    assert model_registry.modelCount() == 2
    assert model_registry.modelIdAt(1) == mid
    # Pending models are not in the approved set.
    assert model_registry.approvedCount() == 1


def test_add_model_boundaries_accepted(model_registry, curator):
    # Shortest valid repo, longest names and metadata, size 1.
    model_registry.addModel("a/b", "c", SHA, 1, "", sender=curator)
    long_repo = "o/" + "r" * (MAX_NAME - 2)
    model_registry.addModel(long_repo, "f" * MAX_NAME, SHA, 1, "m" * MAX_METADATA, sender=curator)
    assert model_registry.modelCount() == 3
    assert (
        model_registry.getModel(model_id(long_repo, "f" * MAX_NAME)).metadata == "m" * MAX_METADATA
    )


@pytest.mark.parametrize(
    "repo",
    [
        "",
        "ab",  # shorter than "a/b"
        "noslash",
        "a/b/c",  # two slashes: "a/b" + "c/f" and "a/b/c" + "f" would collide
        "/ab",
        "ab/",
        "//",
        "o/" + "r" * (MAX_NAME - 1),  # 257 bytes
    ],
)
def test_add_model_rejects_ambiguous_repo(model_registry, curator, repo, reverts):
    with reverts(model_registry.InvalidRepo, repo=repo):
        model_registry.addModel(repo, FILE, SHA, SIZE, META, sender=curator)


@pytest.mark.parametrize("file", ["", "sub/model.gguf", "/model.gguf", "f" * (MAX_NAME + 1)])
def test_add_model_rejects_bad_file(model_registry, curator, file, reverts):
    with reverts(model_registry.InvalidFile, file=file):
        model_registry.addModel(REPO, file, SHA, SIZE, META, sender=curator)


def test_add_model_rejects_zero_hash(model_registry, curator, reverts):
    with reverts(model_registry.InvalidHash):
        model_registry.addModel(REPO, FILE, b"\x00" * 32, SIZE, META, sender=curator)


def test_add_model_rejects_zero_size(model_registry, curator, reverts):
    with reverts(model_registry.InvalidSize):
        model_registry.addModel(REPO, FILE, SHA, 0, META, sender=curator)


def test_add_model_rejects_long_metadata(model_registry, curator, reverts):
    with reverts(model_registry.MetadataTooLong, length=MAX_METADATA + 1):
        model_registry.addModel(REPO, FILE, SHA, SIZE, "m" * (MAX_METADATA + 1), sender=curator)


def test_add_model_rejects_duplicate(model_registry, curator, pending, reverts):
    with reverts(model_registry.ModelExists, modelId=pending):
        model_registry.addModel(REPO, FILE, SHA, SIZE, META, sender=curator)
    # Also when the existing model is approved (TinyVicuna) or deactivated.
    with reverts(model_registry.ModelExists, modelId=TINY_VICUNA_ID):
        model_registry.addModel(TINY_VICUNA_REPO, TINY_VICUNA_FILE, SHA, SIZE, META, sender=curator)
    model_registry.deactivateModel(TINY_VICUNA_ID, sender=curator)
    with reverts(model_registry.ModelExists, modelId=TINY_VICUNA_ID):
        model_registry.addModel(TINY_VICUNA_REPO, TINY_VICUNA_FILE, SHA, SIZE, META, sender=curator)


# ---------------------------------------------------- approve / deactivate


def test_approve_pending_model(model_registry, curator, pending):
    receipt = model_registry.approveModel(pending, sender=curator)
    assert receipt.events == [model_registry.ModelApproved(modelId=pending)]
    assert model_registry.isApproved(pending)
    assert model_registry.sessionModel(pending) == (True, 1)
    assert model_registry.getModel(pending).status == APPROVED


def test_approve_twice_reverts(model_registry, curator, reverts):
    with reverts(model_registry.AlreadyApproved, modelId=TINY_VICUNA_ID):
        model_registry.approveModel(TINY_VICUNA_ID, sender=curator)


def test_approve_unknown_reverts(model_registry, curator, reverts):
    with reverts(model_registry.UnknownModel, modelId=UNKNOWN_ID):
        model_registry.approveModel(UNKNOWN_ID, sender=curator)


def test_deactivate_approved_model(model_registry, curator):
    receipt = model_registry.deactivateModel(TINY_VICUNA_ID, sender=curator)
    assert receipt.events == [model_registry.ModelDeactivated(modelId=TINY_VICUNA_ID)]
    assert not model_registry.isApproved(TINY_VICUNA_ID)
    # Sessions keep the index, so it survives deactivation.
    assert model_registry.sessionModel(TINY_VICUNA_ID) == (False, 0)
    assert model_registry.getModel(TINY_VICUNA_ID).status == DEACTIVATED
    assert model_registry.exists(TINY_VICUNA_ID)


def test_deactivate_pending_reverts(model_registry, curator, pending, reverts):
    with reverts(model_registry.NotApproved, modelId=pending):
        model_registry.deactivateModel(pending, sender=curator)


def test_deactivate_twice_reverts(model_registry, curator, reverts):
    model_registry.deactivateModel(TINY_VICUNA_ID, sender=curator)
    with reverts(model_registry.NotApproved, modelId=TINY_VICUNA_ID):
        model_registry.deactivateModel(TINY_VICUNA_ID, sender=curator)


def test_deactivate_unknown_reverts(model_registry, curator, reverts):
    with reverts(model_registry.UnknownModel, modelId=UNKNOWN_ID):
        model_registry.deactivateModel(UNKNOWN_ID, sender=curator)


def test_reapprove_after_deactivate(model_registry, curator):
    model_registry.deactivateModel(TINY_VICUNA_ID, sender=curator)
    receipt = model_registry.approveModel(TINY_VICUNA_ID, sender=curator)
    assert receipt.events == [model_registry.ModelApproved(modelId=TINY_VICUNA_ID)]
    assert model_registry.sessionModel(TINY_VICUNA_ID) == (True, 0)
    assert model_registry.approvedModels() == [TINY_VICUNA_ID]


# ----------------------------------------------------------- updateMetadata


def test_update_metadata(model_registry, curator):
    receipt = model_registry.updateMetadata(TINY_VICUNA_ID, '{"ctx":32768}', sender=curator)
    assert receipt.events == [
        model_registry.ModelMetadataUpdated(modelId=TINY_VICUNA_ID, metadata='{"ctx":32768}')
    ]
    assert model_registry.getModel(TINY_VICUNA_ID).metadata == '{"ctx":32768}'


def test_update_metadata_works_in_every_state(model_registry, curator, pending):
    model_registry.updateMetadata(pending, "p", sender=curator)
    model_registry.deactivateModel(TINY_VICUNA_ID, sender=curator)
    model_registry.updateMetadata(TINY_VICUNA_ID, "m" * MAX_METADATA, sender=curator)
    assert model_registry.getModel(pending).metadata == "p"
    assert model_registry.getModel(TINY_VICUNA_ID).metadata == "m" * MAX_METADATA


def test_update_metadata_too_long_reverts(model_registry, curator, reverts):
    with reverts(model_registry.MetadataTooLong, length=MAX_METADATA + 1):
        model_registry.updateMetadata(TINY_VICUNA_ID, "m" * (MAX_METADATA + 1), sender=curator)


def test_update_metadata_unknown_reverts(model_registry, curator, reverts):
    with reverts(model_registry.UnknownModel, modelId=UNKNOWN_ID):
        model_registry.updateMetadata(UNKNOWN_ID, "x", sender=curator)


# -------------------------------------------------------------------- views


def test_model_id_at_unknown_index_reverts(model_registry, reverts):
    with reverts(model_registry.UnknownIndex, index=1):
        model_registry.modelIdAt(1)
    with reverts(model_registry.UnknownIndex, index=2**32 - 1):
        model_registry.modelIdAt(2**32 - 1)


def test_get_model_unknown_reverts(model_registry, reverts):
    with reverts(model_registry.UnknownModel, modelId=UNKNOWN_ID):
        model_registry.getModel(UNKNOWN_ID)


def test_unknown_model_views(model_registry):
    assert not model_registry.exists(UNKNOWN_ID)
    assert not model_registry.isApproved(UNKNOWN_ID)
    assert model_registry.sessionModel(UNKNOWN_ID) == (False, 0)


def test_approved_models_enumeration(model_registry, curator, add_model):
    a = add_model("org/a", "a.gguf")
    b = add_model("org/b", "b.gguf")
    c = add_model("org/c", "c.gguf", approve=False)
    assert set(model_registry.approvedModels()) == {TINY_VICUNA_ID, a, b}
    assert model_registry.approvedCount() == 3
    assert model_registry.modelCount() == 4
    assert [model_registry.modelIdAt(i) for i in range(4)] == [TINY_VICUNA_ID, a, b, c]

    model_registry.deactivateModel(a, sender=curator)
    assert set(model_registry.approvedModels()) == {TINY_VICUNA_ID, b}
    model_registry.approveModel(c, sender=curator)
    model_registry.deactivateModel(TINY_VICUNA_ID, sender=curator)
    assert set(model_registry.approvedModels()) == {b, c}
    assert model_registry.approvedCount() == 2
    # Indices never move.
    assert model_registry.modelIdAt(1) == a
    assert model_registry.modelCount() == 4


# -------------------------------------------------------------------- roles


def test_curator_functions_need_curator_role(model_registry, outsider, pending, reverts):
    role = model_registry.CURATOR_ROLE()
    calls = [
        lambda: model_registry.addModel("x/y", "z", SHA, SIZE, "", sender=outsider),
        lambda: model_registry.approveModel(pending, sender=outsider),
        lambda: model_registry.deactivateModel(TINY_VICUNA_ID, sender=outsider),
        lambda: model_registry.updateMetadata(TINY_VICUNA_ID, "x", sender=outsider),
    ]
    for call in calls:
        with reverts(
            model_registry.AccessControlUnauthorizedAccount, account=outsider, neededRole=role
        ):
            call()


def test_admin_is_not_a_curator(model_registry, admin, reverts):
    # Roles are separate: the admin must grant itself CURATOR_ROLE to curate.
    with reverts(model_registry.AccessControlUnauthorizedAccount, account=admin):
        model_registry.approveModel(TINY_VICUNA_ID, sender=admin)


def test_admin_grants_and_revokes_curator(model_registry, admin, curator, outsider, reverts):
    role = model_registry.CURATOR_ROLE()
    receipt = model_registry.grantRole(role, outsider, sender=admin)
    assert receipt.events == [model_registry.RoleGranted(role=role, account=outsider, sender=admin)]
    model_registry.addModel("x/y", "z", SHA, SIZE, "", sender=outsider)
    model_registry.revokeRole(role, curator, sender=admin)
    with reverts(model_registry.AccessControlUnauthorizedAccount, account=curator):
        model_registry.approveModel(model_id("x/y", "z"), sender=curator)


def test_only_admin_grants_roles(model_registry, curator, outsider, reverts):
    role = model_registry.CURATOR_ROLE()
    with reverts(
        model_registry.AccessControlUnauthorizedAccount,
        account=curator,
        neededRole=model_registry.DEFAULT_ADMIN_ROLE(),
    ):
        model_registry.grantRole(role, outsider, sender=curator)
