"""Datasets (digits, ImageFolder), transforms and loaders, and the seeded samplers that fix data
order and augmentation."""
