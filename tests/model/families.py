"""Small models of each architecture option the engines must handle, as ``ViTConfig`` fields:
``{**SMALL, **CASES[name]}``.  Special tokens (distillation, registers) change which rows the last
block must compute and where the patches start; layer scale is folded into the projections the
engine's shortcuts read; SwiGLU doubles the first MLP product; mean and attention pooling read
every patch; backbones have only the metrics that need no logits."""

SMALL = dict(image_size=(8, 12), patch_size=(4, 4), hidden_size=16, num_layers=3, num_heads=2)
CASES = {
    "deit_distilled": dict(
        mlp_dim=24, num_classes=5, distillation_token=True, distillation_head=True
    ),
    "dinov2_registers_swiglu": dict(
        mlp_dim=12,
        num_classes=4,
        num_register_tokens=3,
        position_prefix_tokens=1,
        layer_scale=True,
        mlp_activation="swiglu",
    ),
    "clip_backbone": dict(
        mlp_dim=24,
        num_classes=0,
        pre_norm=True,
        mlp_activation="quick_gelu",
        projection_dim=6,
        patch_bias=False,
    ),
    "siglip_map_sincos": dict(
        mlp_dim=24, num_classes=6, classifier="map", position_embedding="sincos2d"
    ),
    "siglip_backbone": dict(mlp_dim=24, num_classes=0, classifier="map"),
    "mae_gap_fc_norm": dict(
        mlp_dim=24, num_classes=3, classifier="gap", class_token=True, fc_norm=True
    ),
}
