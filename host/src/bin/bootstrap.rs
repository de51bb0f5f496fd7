//! The AWS Lambda function (custom runtime `provided.al2023`) (to be written).

fn main() {}
