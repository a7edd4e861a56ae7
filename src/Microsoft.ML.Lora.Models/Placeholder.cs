namespace Microsoft.ML.Lora.Models;
internal static class Placeholder { }
