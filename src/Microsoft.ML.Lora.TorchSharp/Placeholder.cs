namespace Microsoft.ML.Lora;
internal static class Placeholder { }
